import sys

from clients.demo.run import main

sys.exit(main())
