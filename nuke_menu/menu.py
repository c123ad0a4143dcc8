# Nuke runs this file in GUI sessions only: the ComfyUI Cluster menus and the status panel.
try:
    __import__("comfy_cluster_boot").menu()
except BaseException as _err:  # never stop Nuke from starting
    import sys as _sys

    _sys.stderr.write("[comfy-cluster] menu failed: %s: %s\n" % (type(_err).__name__, _err))
