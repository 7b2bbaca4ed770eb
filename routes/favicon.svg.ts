// GET /favicon.svg - no auth. 200 the status page's icon (SVG).

// Served from here rather than inlined as a data: URI, so that the page's CSP allows images
// from its own origin only.
const ICON = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">
<rect width="32" height="32" rx="7" fill="#0969da"/>
<path d="M16 5l9.5 5.5v11L16 27l-9.5-5.5v-11z" fill="none" stroke="#fff" stroke-width="2.5" stroke-linejoin="round"/>
<circle cx="16" cy="16" r="3.5" fill="#fff"/>
</svg>
`;

export function GET(): Response {
  return new Response(ICON, {
    headers: {
      'content-type': 'image/svg+xml',
      // Opened on its own it is a document: nothing in it may run or load.
      'content-security-policy': "default-src 'none'",
      'x-content-type-options': 'nosniff',
      'cache-control': 'public, max-age=86400',
    },
  });
}
