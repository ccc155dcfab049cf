"""GitLab's job-token route table: which route a method and raw request-target match.

OWNS: the route values (`values`: `Route`, `Target`, `RouteMatch`), Grape's path templates
(`templates`), the compiled per-method trie (`trie`), GitLab facts the generated page does not
carry (`facts`), the route files and their schemas (`file`), the request-target refusals that
apply before any match (`targets`), GitLab's policy names (`permissions`), overlap analysis
(`overlaps`), git over HTTP (`gitpath`) and the table that ties them (`table.RouteTable`).
MAY IMPORT: the standard library, pydantic/yaml (route files), `gateway.errors`, and
`gateway.core.params` from `gitpath` only (Rack's query parsing, for git's `service`).
Nothing here does I/O after start-up.
"""
