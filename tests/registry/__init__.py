"""Registry test infrastructure for erostream: servers and fixtures, Python standard library only.

- registry.py        Debian's docker-registry 2.8 (no auth, htpasswd, token auth), skopeo pushes
- token_server.py    a JWT token server for the registry's token auth (GET and oauth2 POST /token)
- fault_proxy.py     an HTTP forwarder with runtime fault rules, shaping, and a redirect "storage host"
- referrers_server.py  a small in-memory OCI registry with the referrers API
- client.py          a small registry client for the tests' own assertions
- images.py          deterministic OCI test images made from Python (tarfile, gzip)
- tools.py           erostream-mkfs lookup and runner, docker config.json and credential helpers
- fixtures.py        pytest fixtures built from the above
"""
