#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "core/config.h"

static const char *fake_env[16][2];
static char complaints[8][400];
static int n_complaints;

static const char *fake_getenv(const char *name)
{
    for (int i = 0; i < 16 && fake_env[i][0]; i++)
        if (strcmp(fake_env[i][0], name) == 0)
            return fake_env[i][1];
    return NULL;
}

static void record(const char *line)
{
    if (n_complaints < 8)
        snprintf(complaints[n_complaints], sizeof complaints[0], "%s", line);
    n_complaints++;
}

static void setup(void)
{
    memset(fake_env, 0, sizeof fake_env);
    n_complaints = 0;
}

TestSuite(config, .init = setup);

Test(config, durations)
{
    int64_t ms;
    cr_assert_eq(config_parse_duration("500ms", &ms), 0);
    cr_assert_eq(ms, 500);
    cr_assert_eq(config_parse_duration("5s", &ms), 0);
    cr_assert_eq(ms, 5000);
    cr_assert_eq(config_parse_duration("1.5s", &ms), 0);
    cr_assert_eq(ms, 1500);
    cr_assert_eq(config_parse_duration("3", &ms), 0);
    cr_assert_eq(ms, 3000);
    cr_assert_eq(config_parse_duration("2m", &ms), 0);
    cr_assert_eq(ms, 120000);
    cr_assert_eq(config_parse_duration("250us", &ms), 0);
    cr_assert_eq(ms, 1);
    cr_assert_eq(config_parse_duration("0", &ms), 0);
    cr_assert_eq(ms, 0);
}

Test(config, bad_durations)
{
    int64_t ms = 42;
    const char *bad[] = {"", "abc", "-1s", "5 parsecs", "1e400", "nan", "99999999h", "5ss",
                         "inf", "48h", NULL};
    for (int i = 0; bad[i]; i++)
        cr_assert_eq(config_parse_duration(bad[i], &ms), -1, "accepted \"%s\"", bad[i]);
    cr_assert_eq(ms, 42);
}

Test(config, signals)
{
    sigset_t set;
    cr_assert_eq(config_parse_signals("TERM,INT", &set), 0);
    cr_assert(sigismember(&set, SIGTERM) && sigismember(&set, SIGINT));
    cr_assert(!sigismember(&set, SIGHUP));
    cr_assert_eq(config_parse_signals("sigterm, HUP", &set), 0);
    cr_assert(sigismember(&set, SIGHUP));
    cr_assert_eq(config_parse_signals("15", &set), 0);
    cr_assert(sigismember(&set, SIGTERM));
    cr_assert_eq(config_parse_signals("none", &set), 0);
    cr_assert(!sigismember(&set, SIGTERM));
    cr_assert_eq(config_parse_signals("KILL", &set), -1);
    cr_assert_eq(config_parse_signals("SEGV", &set), -1);
    cr_assert_eq(config_parse_signals("TERM,BOGUS", &set), -1);
    cr_assert_eq(config_parse_signals(",", &set), -1);
}

Test(config, defaults_when_unset)
{
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(cfg.deadline_ms, 5000);
    cr_assert_eq(cfg.grace_ms, 3000);
    cr_assert_eq(cfg.log_level, LC_LOG_WARN);
    cr_assert_eq(cfg.disabled, 0);
    cr_assert_eq(n_complaints, 0);
}

Test(config, bad_values_complain_once_each_and_keep_defaults)
{
    fake_env[0][0] = "LASTCALL_DEADLINE";
    fake_env[0][1] = "soon";
    fake_env[1][0] = "LASTCALL_GRACE";
    fake_env[1][1] = "-3";
    fake_env[2][0] = "LASTCALL_SIGNALS";
    fake_env[2][1] = "TERM,KILL";
    fake_env[3][0] = "LASTCALL_DISABLE";
    fake_env[3][1] = "maybe";
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(n_complaints, 4);
    cr_assert_eq(cfg.deadline_ms, 5000);
    cr_assert_eq(cfg.grace_ms, 3000);
    cr_assert_eq(cfg.disabled, 0);
    cr_assert(sigismember(&cfg.signals, SIGTERM));
    cr_assert(strstr(complaints[0], "LASTCALL_") != NULL);
}

Test(config, deadline_zero_is_refused)
{
    fake_env[0][0] = "LASTCALL_DEADLINE";
    fake_env[0][1] = "0";
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(n_complaints, 1);
    cr_assert_eq(cfg.deadline_ms, 5000);
}

Test(config, complaint_quotes_control_characters)
{
    fake_env[0][0] = "LASTCALL_DEADLINE";
    fake_env[0][1] = "5\n\x1b[31ms";
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(n_complaints, 1);
    cr_assert(strchr(complaints[0], '\n') == NULL);
    cr_assert(strchr(complaints[0], '\x1b') == NULL);
}

Test(config, log_off_silences_complaints)
{
    fake_env[0][0] = "LASTCALL_LOG";
    fake_env[0][1] = "off";
    fake_env[1][0] = "LASTCALL_DEADLINE";
    fake_env[1][1] = "bogus";
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(n_complaints, 0);
    cr_assert_eq(cfg.log_level, LC_LOG_OFF);
}

Test(config, good_values)
{
    fake_env[0][0] = "LASTCALL_DEADLINE";
    fake_env[0][1] = "750ms";
    fake_env[1][0] = "LASTCALL_GRACE";
    fake_env[1][1] = "0";
    fake_env[2][0] = "LASTCALL_LOG";
    fake_env[2][1] = "debug";
    fake_env[3][0] = "LASTCALL_DISABLE";
    fake_env[3][1] = "yes";
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(n_complaints, 0);
    cr_assert_eq(cfg.deadline_ms, 750);
    cr_assert_eq(cfg.grace_ms, 0);
    cr_assert_eq(cfg.log_level, LC_LOG_DEBUG);
    cr_assert_eq(cfg.disabled, 1);
}

Test(config, leak_settings)
{
    fake_env[0][0] = "LASTCALL_REPORT";
    fake_env[0][1] = "/tmp/r.json";
    fake_env[1][0] = "LASTCALL_REPORT_FORMAT";
    fake_env[1][1] = "json";
    fake_env[2][0] = "LASTCALL_LEAK_THRESHOLD";
    fake_env[2][1] = "10";
    fake_env[3][0] = "LASTCALL_LEAK_AGE";
    fake_env[3][1] = "30s";
    fake_env[4][0] = "LASTCALL_STATUS_SIGNAL";
    fake_env[4][1] = "USR2";
    fake_env[5][0] = "LASTCALL_LOG_FORMAT";
    fake_env[5][1] = "json";
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(n_complaints, 0);
    cr_assert_str_eq(cfg.report_path, "/tmp/r.json");
    cr_assert_eq(cfg.report_format, LC_FORMAT_JSON);
    cr_assert_eq(cfg.leak_threshold, 10);
    cr_assert_eq(cfg.leak_age_ms, 30000);
    cr_assert_eq(cfg.status_signal, SIGUSR2);
    cr_assert_eq(cfg.log_format, LC_FORMAT_JSON);
    cr_assert_eq(cfg.stacks, 1, "stacks default on when a report is asked for");
}

Test(config, stacks_off_by_default_and_bad_leak_values)
{
    fake_env[0][0] = "LASTCALL_LEAK_THRESHOLD";
    fake_env[0][1] = "-5";
    fake_env[1][0] = "LASTCALL_STATUS_SIGNAL";
    fake_env[1][1] = "TERM"; /* already a drain signal */
    fake_env[2][0] = "LASTCALL_STACK_DEPTH";
    fake_env[2][1] = "65";
    fake_env[3][0] = "LASTCALL_REPORT_FORMAT";
    fake_env[3][1] = "xml";
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(n_complaints, 4);
    cr_assert_eq(cfg.leak_threshold, 0);
    cr_assert_eq(cfg.status_signal, 0);
    cr_assert_eq(cfg.stack_depth, 16);
    cr_assert_eq(cfg.report_format, LC_FORMAT_TEXT);
    cr_assert_eq(cfg.stacks, 0);
}

Test(config, stop_delay)
{
    struct lc_config cfg;
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(cfg.stop_delay_ms, 0, "off by default");
    fake_env[0][0] = "LASTCALL_STOP_DELAY";
    fake_env[0][1] = "5s";
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(n_complaints, 0);
    cr_assert_eq(cfg.stop_delay_ms, 5000);
    fake_env[0][1] = "0";
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(n_complaints, 0);
    cr_assert_eq(cfg.stop_delay_ms, 0, "0 is off");
    fake_env[0][1] = "250ms";
    config_load(&cfg, fake_getenv, record);
    cr_assert_eq(cfg.stop_delay_ms, 250);
    const char *bad[] = {"soon", "-1s", "5 parsecs", "25h", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        n_complaints = 0;
        fake_env[0][1] = bad[i];
        config_load(&cfg, fake_getenv, record);
        cr_assert_eq(n_complaints, 1, "%s", bad[i]);
        cr_assert_eq(cfg.stop_delay_ms, 0, "%s falls back to off", bad[i]);
        cr_assert(strstr(complaints[0], "LASTCALL_STOP_DELAY") != NULL);
        cr_assert(strstr(complaints[0], "using off") != NULL, "%s", complaints[0]);
    }
}
