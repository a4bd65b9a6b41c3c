"""Runtime services of the platform: ingest, serving, router, and the code they share."""
