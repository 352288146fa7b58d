"""The router's built-in web dashboard: `/dashboard` on the REST port, live, offline.

May import: `mesh` (the watched view, the admin API's computation), `protos`, `router.traffic`.
Imports nothing of the data path (`routing`, `dataplane`, the fronts): it reads the router's
traffic through `router.traffic.TrafficCounters` only.

Modules, by job:
- `history`: samples of the last hour in a ring buffer, loads and evictions counted from
  changed instance records (pure);
- `snapshot`: the JSON document, from `MeshAdmin`'s own `FabricStatus` and model summaries (pure);
- `service`: `Dashboard`, which keeps the document current from the view's change
  notifications (coalesced pushes) and takes the samples;
- `web`: the aiohttp routes (page, static files, JSON, server-sent events) and their
  Content-Security-Policy;
- `static/`: the page, its script and style sheet (package data; no CDN, no library).
"""
