from pgnas.cli import main

raise SystemExit(main())
