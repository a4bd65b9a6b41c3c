"""Runtime services of the anomaly-detection platform: ingest, serving, router, and the code they share."""
