"""Feature flags (Unleash, with an offline bootstrap) and A/B reports."""
