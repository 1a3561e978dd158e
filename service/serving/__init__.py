"""What the API does per request, on the services its lifespan opened: groups and their context (groups,
contexts), predictions (predict), best-of-n (generate), readiness (health); one model per kind of feedback (kinds)
through one micro-batcher (services); the checkpoint's predictor and the caches of vectors and encoded contexts."""
