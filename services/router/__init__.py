"""The router: scores features with the model ensemble and turns decisions into alerts."""
