"""The FastAPI app of the seed (the Python service the kit replaces), as is.

Uninstrumented: Debian packages no OpenTelemetry for Python, and the bench
reaches no other package index. Served by gunicorn.conf.py beside this file.
"""
from fastapi import FastAPI

# Create a FastAPI application
app = FastAPI()


@app.get("/")
async def root():
    return {"message": "Hello World from FastAPI with auto-instrumentation!"}


@app.get("/items/{item_id}")
async def read_item(item_id: int):
    return {"item_id": item_id}
