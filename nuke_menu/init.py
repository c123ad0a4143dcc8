# Nuke runs this file in every session (GUI, nuke -t, renders). No UI here.
try:
    __import__("comfy_cluster_boot").init()
except BaseException as _err:  # never stop Nuke from starting
    import sys as _sys

    _sys.stderr.write("[comfy-cluster] start-up failed: %s: %s\n" % (type(_err).__name__, _err))
