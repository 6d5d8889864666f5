from fleet.ops.cli import main

raise SystemExit(main())
