/* test_vm.c - src/host/vm.c in one process against libvirt's test driver, both test:///default and
 * test:///ABSOLUTE/tests/fixtures/vm/libvirt-test-node.xml (argv[1]): define, start, status, stop (clean, the
 * ACPI refusal falling back with a warning, a guest that ignores the request destroyed at the timeout),
 * autostart, undefine (refused while running, --force), missing domains, disks (storage pool volumes and
 * qemu-img), OVMF from a firmware descriptor, connection errors. Each test opens its own connection, so each
 * starts from the node's state. */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>

#include "vm.h"

typedef struct {
    const char *label;
    char uri[PATH_MAX + 16];
    const char *pool_dir; /* the target path of a storage pool the node has */
    bool fixture;         /* the node has titan-plain and titan-stubborn already */
    virConnectPtr conn;
} ctx;

static ctx s_default = {.label = "default", .uri = "test:///default", .pool_dir = "/default-pool"};
static ctx s_fixture = {.label = "fixture", .pool_dir = "/titan-images", .fixture = true};

/* Everything said through titan_vm_say_fn, one "W: " (warning) or "I: " line each. */
typedef struct {
    char text[16384];
    int warnings;
} said;

static void say(void *arg, bool warning, const char *line)
{
    said *s = arg;
    size_t used = strlen(s->text);
    snprintf(s->text + used, sizeof s->text - used, "%s%s\n", warning ? "W: " : "I: ", line);
    if (warning) s->warnings++;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#define assert_contains(hay, needle)                                                                         \
    do {                                                                                                     \
        if (!strstr((hay), (needle))) fail_msg("expected \"%s\" in:\n%s", (needle), (hay));                  \
    } while (0)

static int setup(void **state)
{
    ctx *c = *state;
    char err[2048];
    c->conn = titan_vm_connect(c->uri, err, sizeof err);
    if (!c->conn) fail_msg("%s", err);
    return 0;
}

static int teardown(void **state)
{
    ctx *c = *state;
    if (c->conn) virConnectClose(c->conn);
    c->conn = NULL;
    return 0;
}

/* A test-driver domain named `name`; `stubborn` ignores shutdown requests (on_poweroff restart); `agent` adds
 * the guest agent's channel. */
static void make_xml(const ctx *c, const char *name, bool stubborn, bool agent, char *out, size_t cap)
{
    snprintf(
        out, cap,
        "<domain type='test'>"
        "<name>%s</name><memory unit='KiB'>524288</memory><vcpu>2</vcpu>"
        "<os><type arch='x86_64'>hvm</type></os>"
        "<on_poweroff>%s</on_poweroff>"
        "<devices>"
        "<disk type='file' device='disk'><source file='%s/%s.qcow2'/><target dev='vda' bus='virtio'/></disk>"
        "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
        "<address domain='0x0000' bus='0x03' slot='0x00' function='0x0'/></source></hostdev>"
        "<hostdev mode='subsystem' type='pci' managed='yes'><source>"
        "<address domain='0x0000' bus='0x03' slot='0x00' function='0x1'/></source></hostdev>"
        "%s"
        "</devices></domain>",
        name, stubborn ? "restart" : "destroy", c->pool_dir, name,
        agent ? "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>" : "");
}

static void define(const ctx *c, const char *name, bool stubborn, bool agent, int expect)
{
    char xml[4096], err[2048];
    said s = {0};
    make_xml(c, name, stubborn, agent, xml, sizeof xml);
    int rc = titan_vm_define_xml(c->conn, xml, say, &s, err, sizeof err);
    if (rc != expect) fail_msg("define %s: %d %s", name, rc, rc < 0 ? err : "");
    char line[256];
    snprintf(line, sizeof line, "I: defined %s (%s)\n", name, expect == 1 ? "new" : "updated");
    assert_contains(s.text, line);
}

static void get_status(const ctx *c, const char *name, titan_vm_status *st)
{
    char err[2048];
    int rc = titan_vm_status_get(c->conn, name, st, err, sizeof err);
    if (rc != 0) fail_msg("status %s: %d %s", name, rc, err);
}

static void expect_state(const ctx *c, const char *name, const char *state, const char *reason)
{
    titan_vm_status st;
    get_status(c, name, &st);
    assert_string_equal(st.state, state);
    if (reason) assert_string_equal(st.reason, reason);
}

static void test_lifecycle(void **state)
{
    ctx *c = *state;
    char err[2048];
    titan_vm_status st;

    define(c, "titan-test", false, false, 1);
    define(c, "titan-test", false, false, 0);
    get_status(c, "titan-test", &st);
    assert_string_equal(st.name, "titan-test");
    assert_string_equal(st.state, "shutoff");
    assert_true(st.persistent);
    assert_false(st.autostart);
    assert_true(st.uptime_s < 0);
    assert_int_equal(st.vcpus, 2);
    assert_int_equal(st.memory_kib, 524288);
    assert_int_equal(st.nhostdevs, 2);
    assert_string_equal(st.hostdevs[0], "0000:03:00.0");
    assert_string_equal(st.hostdevs[1], "0000:03:00.1");

    assert_int_equal(titan_vm_start(c->conn, "titan-test", err, sizeof err), 0);
    assert_int_equal(titan_vm_start(c->conn, "titan-test", err, sizeof err), 1); /* already running */
    expect_state(c, "titan-test", "running", "booted");
    get_status(c, "titan-test", &st);
    assert_true(st.uptime_s < 0); /* the test driver has no QEMU process to measure */

    /* No agent channel: the ACPI power button, which the test driver refuses, then its default. */
    said s = {0};
    titan_vm_stop_result res = TITAN_VM_DESTROYED;
    double t0 = now();
    int rc = titan_vm_stop(c->conn, "titan-test", 5000, say, &s, &res, err, sizeof err);
    if (rc) fail_msg("stop: %s", err);
    assert_int_equal(res, TITAN_VM_STOPPED_CLEANLY);
    assert_true(now() - t0 < 2.0); /* it returns as soon as the domain is off, not at the timeout */
    assert_contains(s.text, "W: the driver refused the ACPI power button (unsupported flags (0x1)");
    assert_contains(s.text, "trying the driver's default shutdown instead\n");
    assert_null(strstr(s.text, "guest agent"));
    assert_null(strstr(s.text, "destroyed"));
    assert_int_equal(s.warnings, 1);
    expect_state(c, "titan-test", "shutoff", "shutdown");

    memset(&s, 0, sizeof s);
    assert_int_equal(titan_vm_stop(c->conn, "titan-test", 5000, say, &s, &res, err, sizeof err), 0);
    assert_int_equal(res, TITAN_VM_WAS_OFF);
    assert_int_equal(s.warnings, 0);

    assert_int_equal(titan_vm_autostart(c->conn, "titan-test", true, err, sizeof err), 0);
    get_status(c, "titan-test", &st);
    assert_true(st.autostart);
    assert_int_equal(titan_vm_autostart(c->conn, "titan-test", false, err, sizeof err), 0);
    get_status(c, "titan-test", &st);
    assert_false(st.autostart);

    memset(&s, 0, sizeof s);
    rc = titan_vm_undefine(c->conn, "titan-test", false, say, &s, err, sizeof err);
    if (rc) fail_msg("undefine: %s", err);
    assert_contains(s.text, "I: undefined titan-test\n");
    char kept[256];
    snprintf(kept, sizeof kept, "I: kept its disk %s/titan-test.qcow2\n", c->pool_dir);
    assert_contains(s.text, kept);
    assert_int_equal(titan_vm_status_get(c->conn, "titan-test", &st, err, sizeof err), -ENOENT);
}

/* A guest that ignores the request (on_poweroff restart) is destroyed at the timeout; with the agent channel
 * the agent is asked first, and each refusal falls back with a warning. */
static void test_stop_ignored_destroys(void **state)
{
    ctx *c = *state;
    char err[2048];
    if (!c->fixture) {
        define(c, "titan-stubborn", true, true, 1);
        assert_int_equal(titan_vm_start(c->conn, "titan-stubborn", err, sizeof err), 0);
    }
    expect_state(c, "titan-stubborn", "running", NULL);
    said s = {0};
    titan_vm_stop_result res = TITAN_VM_STOPPED_CLEANLY;
    double t0 = now();
    int rc = titan_vm_stop(c->conn, "titan-stubborn", 1000, say, &s, &res, err, sizeof err);
    double took = now() - t0;
    if (rc) fail_msg("stop: %s", err);
    assert_int_equal(res, TITAN_VM_DESTROYED);
    assert_true(took >= 0.95);
    assert_true(took < 5.0);
    const char *agent = strstr(s.text, "W: the driver refused the guest agent (unsupported flags (0x2)");
    const char *acpi = strstr(s.text, "W: the driver refused the ACPI power button (unsupported flags (0x1)");
    if (!agent || !acpi || agent > acpi) fail_msg("expected the agent, then ACPI refused, in:\n%s", s.text);
    assert_contains(s.text, "trying the ACPI power button instead\n");
    assert_contains(
        s.text, "I: asked titan-stubborn to shut down (the driver's default shutdown); waiting up to 1 s\n");
    assert_contains(s.text, "W: still running after 1 s: destroyed\n");
    expect_state(c, "titan-stubborn", "shutoff", "destroyed");
}

static void test_missing_domain(void **state)
{
    ctx *c = *state;
    char err[2048];
    titan_vm_status st;
    titan_vm_stop_result res;
    memset(&st, 0x5a, sizeof st);
    titan_vm_status before = st;
    assert_int_equal(titan_vm_status_get(c->conn, "no-such-vm", &st, err, sizeof err), -ENOENT);
    assert_memory_equal(&st, &before, sizeof st); /* written only on success */
    assert_contains(err, "no domain no-such-vm");
    assert_contains(err, "`titan vm define --config vm.yaml` first");
    assert_contains(err, "virsh list --all");
    err[0] = '\0';
    assert_int_equal(titan_vm_start(c->conn, "no-such-vm", err, sizeof err), -ENOENT);
    assert_contains(err, "titan vm define --config vm.yaml");
    assert_int_equal(titan_vm_stop(c->conn, "no-such-vm", 1000, NULL, NULL, &res, err, sizeof err), -ENOENT);
    assert_int_equal(titan_vm_autostart(c->conn, "no-such-vm", true, err, sizeof err), -ENOENT);
    assert_int_equal(titan_vm_undefine(c->conn, "no-such-vm", true, NULL, NULL, err, sizeof err), -ENOENT);
}

static void test_undefine_running(void **state)
{
    ctx *c = *state;
    char err[2048];
    define(c, "titan-test", false, false, 1);
    assert_int_equal(titan_vm_start(c->conn, "titan-test", err, sizeof err), 0);
    said s = {0};
    assert_int_equal(titan_vm_undefine(c->conn, "titan-test", false, say, &s, err, sizeof err), -EBUSY);
    assert_contains(err, "titan-test is running");
    assert_contains(err, "--force");
    assert_string_equal(s.text, "");
    expect_state(c, "titan-test", "running", NULL);

    int rc = titan_vm_undefine(c->conn, "titan-test", true, say, &s, err, sizeof err);
    if (rc) fail_msg("undefine --force: %s", err);
    assert_contains(s.text, "W: titan-test was running: destroyed\n");
    /* The test driver refuses VIR_DOMAIN_UNDEFINE_NVRAM: the plain undefine, with a warning. */
    assert_contains(s.text, "W: the driver cannot undefine with its NVRAM (unsupported flags (0x4)");
    assert_contains(s.text, "undefining titan-test plainly\n");
    assert_contains(s.text, "I: undefined titan-test\n");
    titan_vm_status st;
    assert_int_equal(titan_vm_status_get(c->conn, "titan-test", &st, err, sizeof err), -ENOENT);
}

static void test_fixture_domains(void **state)
{
    ctx *c = *state;
    titan_vm_status st;
    get_status(c, "titan-plain", &st);
    assert_string_equal(st.state, "running");
    assert_true(st.persistent);
    assert_int_equal(st.vcpus, 2);
    assert_int_equal(st.memory_kib, 1048576);
    assert_int_equal(st.nhostdevs, 2);
    assert_string_equal(st.hostdevs[0], "0000:65:00.0");
    assert_string_equal(st.hostdevs[1], "0000:65:00.1");
    get_status(c, "titan-stubborn", &st);
    assert_int_equal(st.nhostdevs, 0);
    assert_int_equal(st.vcpus, 1);
}

static void conf_for(titan_vmconf *v, const char *path, uint64_t size, const char *fmt)
{
    memset(v, 0, sizeof *v);
    snprintf(v->name, sizeof v->name, "titan-test");
    snprintf(v->disk_path, sizeof v->disk_path, "%s", path);
    snprintf(v->disk_format, sizeof v->disk_format, "%s", fmt);
    v->disk_size_bytes = size;
}

/* A missing image in a pool's directory becomes a volume of that pool. */
static void test_disk_in_pool(void **state)
{
    ctx *c = *state;
    char err[2048], path[512];
    titan_vmconf v;
    snprintf(path, sizeof path, "%s/titan-new.qcow2", c->pool_dir);
    conf_for(&v, path, 1ULL << 30, "qcow2");
    said s = {0};
    int rc = titan_vm_ensure_disk(c->conn, &v, say, &s, err, sizeof err);
    if (rc != 1) fail_msg("ensure_disk: %d %s", rc, err);
    char line[600];
    snprintf(line, sizeof line, "I: created disk %s (1 GiB, qcow2) in storage pool ", path);
    assert_contains(s.text, line);
    virStorageVolPtr vol = virStorageVolLookupByPath(c->conn, path);
    assert_non_null(vol);
    virStorageVolInfo info;
    assert_int_equal(virStorageVolGetInfo(vol, &info), 0);
    assert_int_equal(info.capacity, 1ULL << 30);
    virStorageVolFree(vol);
    memset(&s, 0, sizeof s);
    assert_int_equal(titan_vm_ensure_disk(c->conn, &v, say, &s, err, sizeof err), 0); /* there now */
    assert_string_equal(s.text, "");
    conf_for(&v, path, 0, "qcow2"); /* no size: nothing to make */
    assert_int_equal(titan_vm_ensure_disk(c->conn, &v, say, &s, err, sizeof err), 0);
}

static void write_script(const char *path, const char *body)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fprintf(f, "#!/bin/sh\n%s", body);
    fclose(f);
    assert_int_equal(chmod(path, 0755), 0);
}

static void read_file(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) fail_msg("cannot read %s", path);
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    fclose(f);
}

/* Outside every pool: qemu-img from PATH (a stand-in here that records its arguments), no shell; missing or
 * failing, a clear error. */
static void test_disk_qemu_img(void **state)
{
    ctx *c = *state;
    char tmp[] = "/tmp/titan-vm-XXXXXX";
    assert_non_null(mkdtemp(tmp));
    char bin[300], empty[300], script[400], args[400], img[400], body[1024], err[2048], got[1024];
    snprintf(bin, sizeof bin, "%s/bin", tmp);
    snprintf(empty, sizeof empty, "%s/empty", tmp);
    snprintf(script, sizeof script, "%s/qemu-img", bin);
    snprintf(args, sizeof args, "%s/args", tmp);
    snprintf(img, sizeof img, "%s/disk with space.img", tmp);
    assert_int_equal(mkdir(bin, 0755), 0);
    assert_int_equal(mkdir(empty, 0755), 0);
    snprintf(body, sizeof body, "for a in \"$@\"; do printf '[%%s]' \"$a\"; done > '%s'\n: > \"$4\"\n", args);
    write_script(script, body);
    char *old_path = strdup(getenv("PATH") ? getenv("PATH") : "/usr/bin:/bin");
    assert_non_null(old_path);

    titan_vmconf v;
    conf_for(&v, img, 2ULL << 20, "raw");
    said s = {0};
    setenv("PATH", bin, 1);
    int rc = titan_vm_ensure_disk(c->conn, &v, say, &s, err, sizeof err);
    if (rc != 1) fail_msg("ensure_disk: %d %s", rc, err);
    read_file(args, got, sizeof got);
    char want[600];
    snprintf(want, sizeof want, "[create][-f][raw][%s][2097152]", img);
    assert_string_equal(got, want);
    snprintf(want, sizeof want, "I: created disk %s (2 MiB, raw) with qemu-img\n", img);
    assert_string_equal(s.text, want);

    /* The image exists now: qemu-img is not run again. */
    unlink(args);
    assert_int_equal(titan_vm_ensure_disk(c->conn, &v, say, &s, err, sizeof err), 0);
    assert_int_equal(access(args, F_OK), -1);

    /* Failing: its message comes through. */
    write_script(script, "echo \"qemu-img: Could not create: Permission denied\" >&2\nexit 1\n");
    snprintf(img, sizeof img, "%s/other.qcow2", tmp);
    conf_for(&v, img, 1ULL << 30, "qcow2");
    assert_int_equal(titan_vm_ensure_disk(c->conn, &v, say, &s, err, sizeof err), -EIO);
    assert_contains(err, "qemu-img create -f qcow2");
    assert_contains(err, "Could not create: Permission denied");

    /* Missing. */
    setenv("PATH", empty, 1);
    assert_int_equal(titan_vm_ensure_disk(c->conn, &v, say, &s, err, sizeof err), -ENOENT);
    assert_contains(err, "qemu-img is missing");
    setenv("PATH", old_path, 1);
    free(old_path);

    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    assert_int_equal(system(cmd), 0);
}

/* titan_vm_define: vm.yaml's XML (src/host/vmconf.c) and the disk made in the pool, then "(updated)" on a
 * second define of XML that carries no <uuid>. */
static void test_define_from_conf(void **state)
{
    ctx *c = *state;
    char yaml[1024], err[2048] = "";
    snprintf(yaml, sizeof yaml,
             "name: titan-conf\nmemory: 1GiB\nvcpus: 2\ndisk:\n  path: %s/titan-conf.qcow2\n  size: 2GiB\n"
             "gpu: [0000:03:00.0, 03:00.1]\nguest_agent: true\n",
             c->pool_dir);
    titan_vmconf v;
    int rc = titan_vmconf_load_string(yaml, strlen(yaml), "vm.yaml", &v, err, sizeof err);
    if (rc) fail_msg("vm.yaml: %s", err);
    said s = {0};
    rc = titan_vm_define(c->conn, &v, say, &s, err, sizeof err);
    if (rc != 1) fail_msg("define: %d %s", rc, err);
    assert_contains(s.text, "in storage pool");
    assert_contains(s.text, "I: defined titan-conf (new)\n");
    memset(&s, 0, sizeof s);
    rc = titan_vm_define(c->conn, &v, say, &s, err, sizeof err);
    if (rc != 0) fail_msg("define again: %d %s", rc, err);
    assert_string_equal(s.text, "I: defined titan-conf (updated)\n"); /* the disk is there now */
    titan_vm_status st;
    get_status(c, "titan-conf", &st);
    assert_int_equal(st.nhostdevs, 2);
    assert_string_equal(st.hostdevs[1], "0000:03:00.1");
    assert_int_equal(st.memory_kib, 1 << 20);
}

/* The design's VM with the OVMF that titan vm takes from a firmware descriptor (Arch's): libvirt keeps the
 * loader and the VARS template it makes the domain's nvram from. */
static void test_define_descriptor_firmware(void **state)
{
    ctx *c = *state;
    char err[2048] = "";
    const char *yaml = "name: titan-worker\nmemory: 1GiB\nvcpus: 1\n"
                       "disk: {path: /var/lib/libvirt/images/titan-worker.qcow2}\n";
    titan_vmconf v;
    int rc = titan_vmconf_load_string(yaml, strlen(yaml), "vm.yaml", &v, err, sizeof err);
    if (rc) fail_msg("vm.yaml: %s", err);
    snprintf(v.loader, sizeof v.loader, "/usr/share/edk2/x64/OVMF_CODE.4m.fd");
    snprintf(v.nvram_template, sizeof v.nvram_template, "/usr/share/edk2/x64/OVMF_VARS.4m.fd");
    said s = {0};
    rc = titan_vm_define(c->conn, &v, say, &s, err, sizeof err);
    if (rc != 1) fail_msg("define: %d %s", rc, err);
    virDomainPtr dom = virDomainLookupByName(c->conn, "titan-worker");
    assert_non_null(dom);
    char *xml = virDomainGetXMLDesc(dom, 0);
    assert_non_null(xml);
    assert_contains(xml, "type='pflash'>/usr/share/edk2/x64/OVMF_CODE.4m.fd</loader>");
    assert_contains(xml, "<nvram template='/usr/share/edk2/x64/OVMF_VARS.4m.fd'");
    free(xml);
    virDomainFree(dom);
}

static void test_connect_errors(void **state)
{
    char err[2048];
    errno = 0;
    virConnectPtr conn = titan_vm_connect("test:///nonexistent-dir/node.xml", err, sizeof err);
    assert_null(conn);
    assert_true(errno != 0);
    assert_contains(err, "cannot connect to test:///nonexistent-dir/node.xml: ");
    assert_contains(err, "--connect URI or $TITAN_LIBVIRT_URI");
    conn = titan_vm_connect("qemu+unix:///system?socket=/nonexistent-dir/libvirt-sock", err, sizeof err);
    assert_null(conn);
    assert_contains(err, "is libvirtd (or virtqemud) running?");
    assert_contains(err, "libvirt group");
}

static void test_process_uptime(void **state)
{
    double up = -1;
    assert_int_equal(titan_vm_process_uptime(getpid(), &up), 0);
    assert_true(up >= 0 && up < 600); /* this process began moments ago */
    assert_int_equal(titan_vm_process_uptime(1, &up), 0);
    double init_up = up;
    assert_true(init_up >= 0);
    up = 12345;
    assert_int_equal(titan_vm_process_uptime(INT_MAX, &up), -ENOENT);
    assert_true(up == 12345);
}

#define BOTH(fn)                                                                                             \
    {#fn " (test:///default)", fn, setup, teardown, &s_default},                                             \
    {                                                                                                        \
#fn " (fixture)", fn, setup, teardown, &s_fixture                                                    \
    }

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: test_vm /path/to/tests/fixtures/vm/libvirt-test-node.xml\n");
        return 2;
    }
    char abs[PATH_MAX];
    if (!realpath(argv[1], abs)) {
        fprintf(stderr, "test_vm: %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    snprintf(s_fixture.uri, sizeof s_fixture.uri, "test://%s", abs);
    titan_vm_init(); /* before any connection, as the CLI does */
    const struct CMUnitTest tests[] = {
        BOTH(test_lifecycle),
        BOTH(test_stop_ignored_destroys),
        BOTH(test_missing_domain),
        BOTH(test_undefine_running),
        {"test_fixture_domains (fixture)", test_fixture_domains, setup, teardown, &s_fixture},
        BOTH(test_disk_in_pool),
        BOTH(test_disk_qemu_img),
        BOTH(test_define_from_conf),
        BOTH(test_define_descriptor_firmware),
        cmocka_unit_test(test_connect_errors),
        cmocka_unit_test(test_process_uptime),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
