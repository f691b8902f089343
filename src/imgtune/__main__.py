import sys

from imgtune.cli.main import main

sys.exit(main())
