"""The gateway's request handlers, one module per resource: users, orders, the dashboard, health and meta."""
