"""The HTTP API: validates requests, enqueues jobs, relays job event streams as SSE."""
