"""The HTTP routes, one module-level router per resource; app/main.py includes them."""
