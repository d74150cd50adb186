"""Running the mesh on one machine: the CLI (``cli``), the supervised local stack (``stack``,
``supervisor``, ``procs``, ``local_redis``, ``alerting``) and the demos (``demo``,
``narrated_demo``). The top floor: nothing else in healmesh, and no entry point (bentos/,
gateway/, dags/), imports it."""
