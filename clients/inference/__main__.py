import sys

from clients.inference.server import main

sys.exit(main())
