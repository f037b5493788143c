"""Files every stage writes or reads the same way: atomic folders (atomic.py) and YAML with
file:line errors (yaml_io.py)."""
