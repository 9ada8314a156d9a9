from asm_proxy.cli import main

raise SystemExit(main())
