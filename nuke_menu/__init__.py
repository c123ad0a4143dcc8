"""The thin Nuke layer of comfy-cluster: knobs to calls of ``comfy_cluster.run``, events to Nuke UI."""
