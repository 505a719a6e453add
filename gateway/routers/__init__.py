"""The gateway's HTTP routes, one router per area; app.py assembles them."""
