"""The predictors: routing with retries and breakers, regions and health, per-version pinning
(canaries), shadow traffic, the v2 pass-through's bounds."""
