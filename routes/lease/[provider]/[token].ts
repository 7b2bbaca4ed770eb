// DELETE /lease/:provider/:token - auth. The original's later form: the token alone identifies
// the lease, so the provider segment is accepted whatever it says. Statuses as /lease/:token.

export { DELETE } from '../[token].ts';
