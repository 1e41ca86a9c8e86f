"""The seed's gunicorn.conf.py, with three changes for the benchmark:

- bind: 127.0.0.1 and the port the bench chose (BENCH_PORT), not 0.0.0.0:8000;
- no access log: the kit writes none per request, and a line per request
  on stdout would dominate the cost being compared;
- no max_requests: a worker recycled after 5000 requests mid-run would take
  its CPU counters with it (the kit has no equivalent either).
"""
import os

# Server socket
bind = "127.0.0.1:" + os.environ.get("BENCH_PORT", "8000")
backlog = 2048

# Worker processes
workers = 2
worker_class = "uvicorn.workers.UvicornWorker"
worker_connections = 1000
timeout = 60
keepalive = 2

# Logging
loglevel = "warning"
errorlog = "-"
accesslog = None

# Process naming
proc_name = "bench-fastapi"

# Server mechanics
daemon = False
preload_app = False
