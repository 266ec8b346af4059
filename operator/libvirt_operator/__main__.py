"""python -m libvirt_operator"""

import sys

from libvirt_operator.cli import main

sys.exit(main())
