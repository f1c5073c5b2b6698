from pgtape.cli import main

raise SystemExit(main())
