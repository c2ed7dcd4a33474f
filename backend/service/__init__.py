"""The backend service: HTTP API, auth, job runner, event stream, and the Python client."""
