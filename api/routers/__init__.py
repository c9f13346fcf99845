"""The API's routers, one per resource: health, videos, questions (query and search), jobs.
Each module's `router(svc, models)` builds its APIRouter over the app's Service."""
