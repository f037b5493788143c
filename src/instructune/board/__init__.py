"""The board: `instructune board`, a local web page with a tab per stage over the Python API.

app.py builds the page and serves it; data_tab.py ... export_tab.py are the tabs; form.py (the run
config as a form), metrics.py (the live curves), process.py (the training process), paths.py (the
working folder) and state.py (what the tabs share) are the glue. Needs the `board` extra (gradio).
"""
