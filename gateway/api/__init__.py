"""The HTTP surface: routers per area (routers/), bounded ingress, OpenAPI schemas, how uvicorn serves it.

A new area is a module in routers/ with an APIRouter named `router`, listed in routers.AREAS."""
