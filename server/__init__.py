"""vitprune's service layer: the only layer that knows HTTP and the job tables.

Where things are:
- `app`: the FastAPI app (`create_app`): REST API, dashboard, health, and optionally a worker thread.
- `api/`: thin route handlers (`api/routes/*.py`), their dependencies (`deps`) and schemas.
- `dashboard/`: the HTML pages and their static files.
- `db/`: SQLAlchemy models, engine and migrations; `jobs`: the job life cycle and leases.
- `worker`: `ServiceWorker`, which claims queued jobs and runs them through the search layer.
- `store`: the artifact store (bundles, ONNX files, uploads); `uploads`: safe receiving of uploads.
- `settings`: VITPRUNE_* settings; `demo`: the `vitprune serve --demo` model and job; `demo_job`: that job,
  listed at once while a background thread prepares its model.

Jobs run through the search layer (`search`), the same code `vitprune search` runs.
"""
