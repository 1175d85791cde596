"""Read-only serving of the published tables: the dashboard (Streamlit) and the HTTP API (FastAPI).

Neither starts Spark or trains anything. ``store`` loads what ``recommend``
published into memory and reloads it when a new night is published; ``views``
holds the page and endpoint logic as plain functions over a loaded snapshot;
``diagram`` draws the DSER architecture of the serving model; ``api`` and
``app`` (the Streamlit page, started by ``dashboard``) are the two surfaces.
"""
