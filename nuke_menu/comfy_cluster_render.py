"""``nuke -t comfy_cluster_render.py [script.nk] NODE [NODE ...] [--save]``: render Render nodes headless."""

import sys

from nuke_menu.headless import main

sys.exit(main(sys.argv[1:]))
