# The k8s-claimer server image: production dependencies only, TypeScript run by tsx, non-root.
# Build: docker build -t k8s-claimer:latest .   (k8s/README.md: pushing and deploying)
FROM node:24-slim

WORKDIR /app

# Dependencies first, in their own layer: source edits do not re-run the install.
# tsx is a runtime dependency (it runs main.ts), so --omit=dev keeps it. --omit=dev still
# installs typescript (about 30 MB with its native compiler): valibot names it as an optional
# peer, and npm keeps a dev dependency that a production package names so (npm/cli#7740).
# Nothing at runtime uses it (tsx compiles with esbuild), so it is removed.
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && rm -rf node_modules/typescript node_modules/@typescript node_modules/.bin/tsc \
 && npm cache clean --force

# The application sources, nothing else (.dockerignore also keeps node_modules, tests,
# benchmarks, data/ with its local auth token, and .git out of the build context).
# tsconfig.json: tsx reads it, so the image compiles the code exactly as development does.
COPY tsconfig.json main.ts app.ts ./
COPY routes/ ./routes/
COPY services/ ./services/
COPY pool/ ./pool/
COPY bin/ ./bin/
COPY cli/ ./cli/

# The CLI that GET /cli/k8s-claimer.mjs hands out, bundled into one file (dist/k8s-claimer.mjs)
# by esbuild, which the production install has as tsx's compiler. Only the .mjs: the single
# executable (`npm run build`) is a release download, not something the server serves.
RUN npm run build:mjs

# Files stay owned by root and read-only to the server; it runs as the image's `node` user,
# numerically so that Kubernetes' runAsNonRoot can verify it.
USER 1000:1000

ENV NODE_ENV=production BIND_PORT=8080
EXPOSE 8080

# Exec form: SIGTERM reaches tsx directly (no shell in between), which relays it to the
# server; main.ts then finishes requests in flight and exits 0.
CMD ["node_modules/.bin/tsx", "main.ts"]
