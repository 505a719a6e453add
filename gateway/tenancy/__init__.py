"""Who calls and what they may do: authentication (API keys, OIDC), the tenants file, quotas,
progress tickets, completion callbacks."""
