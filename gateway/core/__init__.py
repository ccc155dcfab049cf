"""The decision core: one request view in, one `Decision` out, with no web framework.

OWNS: the framework-free request view (`request`), params and header values as Rack,
ActionPack and Grape read them (`params`, `multipart`), the credentials and their precedence
(`tokens`, `carriers`, `conan_jwt`), GitLab's authorization rules (`policy`, `visibility`),
the gate that runs extract -> match -> resolve -> decide (`gate`) and the decision values
(`decision`: `Reason`, `Decision`, `Audit`, the GitLab messages).
MAY IMPORT: the standard library, `gateway.errors`, `gateway.settings`, `gateway.routing` (the
route table) and `gateway.stores` (the Store Protocols, the cache). Never aiohttp (a test holds
it: tests/test_layout.py), never a listener (`gateway.proxy`, `gateway.authz`, `gateway.wire`)
or `gateway.ops`: the proxy listener, the decision listener, `check` and the tests call the same
code with a `RequestView`.
"""
