<?php
// PHP's pgsql extension (loaded by PHP with dlopen RTLD_DEEPBIND, so its
// libpq calls bind straight to libpq) with 3 connections inside transactions.
//   php reach_pgsql.php hold   prints "ready", sleeps (the test sends SIGTERM)
//   php reach_pgsql.php exit   exits without closing anything
//   php reach_pgsql.php pdo    the same as exit, through pdo_pgsql
$mode = $argv[1] ?? 'exit';
$held = [];
for ($i = 0; $i < 3; $i++) {
    if ($mode === 'pdo') {
        $c = new PDO('pgsql:');
        $c->beginTransaction();
        $c->query('SELECT 1');
    } else {
        // PGCONNECT_FORCE_NEW: three backends, not one shared link.
        $c = pg_connect('', PGSQL_CONNECT_FORCE_NEW);
        if ($c === false) {
            fwrite(STDERR, "connect failed\n");
            exit(3);
        }
        pg_query($c, 'BEGIN');
        pg_query($c, 'SELECT 1');
    }
    $held[] = $c;
}
echo "ready\n";
if ($mode === 'hold') {
    sleep(120);
}
exit(0);
