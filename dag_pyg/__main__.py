import sys

from dag_pyg.cli import main

sys.exit(main())
