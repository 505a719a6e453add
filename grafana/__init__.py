"""musicsplit's Grafana dashboards as code (grafana-foundation-sdk).

One module per dashboard (overview, quality, canary, cost, users), shared
panels in panels.py and PromQL building blocks in queries.py; render.py
writes them to dashboards/*.json, which the Helm chart ships.
"""
