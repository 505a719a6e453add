"""The gateway's HTTP routes, one router per area; app.py includes every one in AREAS.

A new area: a module here with an APIRouter named `router`, added to AREAS (one line)."""

from musicsplit.gateway.api.routers import operations, separations, uploads, v2

AREAS = (separations, uploads, v2, operations)
