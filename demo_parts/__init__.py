"""The demo's machinery: the stage runner (stages.py) and the results (results.py) of demo.py."""
