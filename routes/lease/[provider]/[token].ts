// /lease/:provider/:token - the original's later form: the token alone identifies the lease,
// so the provider segment is accepted whatever it says. Methods and statuses as /lease/:token.

export { DELETE, GET, PATCH } from '../[token].ts';
