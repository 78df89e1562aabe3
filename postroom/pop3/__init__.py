"""POP3 (RFC 1939 with RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 SASL): `protocol` is the sans-I/O core,
`session` drives it over a connection and the store."""
