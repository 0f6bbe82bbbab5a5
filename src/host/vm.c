/* vm.c - the VM life cycle through the libvirt C API: define (and its disk), start, stop, status, autostart,
 * undefine. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libvirt/virterror.h>

#include "clock.h"
#include "vm.h"

#define S_POLL_MS 100    /* state polling period where events are not available */
#define S_RECHECK_MS 250 /* with events: a state check this often all the same, in case one is missed */

static pthread_once_t s_init_once = PTHREAD_ONCE_INIT;
/* Set once by titan_vm_init: libvirt's default event loop is the registered one, so running it is right. */
static bool s_default_loop;

/* libvirt prints every error to stderr unless told otherwise; titan reports them itself. */
static void s_quiet_error(void *arg, virErrorPtr e) {}

static void s_init(void)
{
    virSetErrorFunc(NULL, s_quiet_error);
    s_default_loop = virEventRegisterDefaultImpl() == 0;
}

void titan_vm_init(void)
{
    pthread_once(&s_init_once, s_init);
}

static void s_say(titan_vm_say_fn say, void *arg, bool warning, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void s_say(titan_vm_say_fn say, void *arg, bool warning, const char *fmt, ...)
{
    if (!say) return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    say(arg, warning, line);
}

/* The -errno for libvirt error code `code`. */
static int s_errno_of(int code)
{
    switch (code) {
    case VIR_ERR_NO_DOMAIN:
    case VIR_ERR_NO_STORAGE_POOL:
    case VIR_ERR_NO_STORAGE_VOL:
        return -ENOENT;
    case VIR_ERR_NO_SUPPORT:
    case VIR_ERR_ARGUMENT_UNSUPPORTED:
    case VIR_ERR_OPERATION_UNSUPPORTED:
        return -ENOTSUP;
    case VIR_ERR_AUTH_FAILED:
    case VIR_ERR_AUTH_CANCELLED:
    case VIR_ERR_ACCESS_DENIED:
    case VIR_ERR_OPERATION_DENIED:
        return -EACCES;
    case VIR_ERR_NO_CONNECT:
    case VIR_ERR_RPC:
        return -ECONNREFUSED;
    case VIR_ERR_OPERATION_TIMEOUT:
    case VIR_ERR_AGENT_UNRESPONSIVE:
        return -ETIMEDOUT;
    case VIR_ERR_INVALID_ARG:
    case VIR_ERR_XML_ERROR:
    case VIR_ERR_XML_DETAIL:
    case VIR_ERR_CONFIG_UNSUPPORTED:
        return -EINVAL;
    case VIR_ERR_OPERATION_INVALID:
        return -EBUSY;
    case VIR_ERR_NO_MEMORY:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

/* Advice for libvirt's last error `e` about domain `name`, or "". */
static const char *s_hint(const virError *e, const char *name)
{
    if (!e) return "";
    switch (e->code) {
    case VIR_ERR_NO_DOMAIN:
        return "; define it with `titan vm define --config vm.yaml` first (`virsh list --all` lists the "
               "domains libvirt knows)";
    case VIR_ERR_AUTH_FAILED:
    case VIR_ERR_AUTH_CANCELLED:
    case VIR_ERR_ACCESS_DENIED:
    case VIR_ERR_OPERATION_DENIED:
        return "; run as root or join the libvirt group (`sudo usermod -aG libvirt $USER`, then log in "
               "again)";
    default:
        break;
    }
    const char *m = e->message ? e->message : "";
    if (strstr(m, "vfio") || strstr(m, "VFIO") || strstr(m, "IOMMU") || strstr(m, "iommu"))
        return "; check the host's VFIO setup with `titan host check` (and `titan host bind ADDRESS`)";
    return "";
}

/* Writes "WHAT: libvirt's message; hint" into err (WHAT from fmt) and returns the matching -errno. */
static int s_fail(char *err, size_t errcap, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int s_fail(char *err, size_t errcap, const char *name, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    const virError *e = virGetLastError();
    snprintf(err, errcap, "%s: %s%s", what, e && e->message ? e->message : "unknown libvirt error",
             s_hint(e, name));
    return e ? s_errno_of(e->code) : -EIO;
}

/* True when libvirt's last error says the driver does not do what was asked the way it was asked (a flag
 * it refuses, an agent that is not there), so another method may work. */
static bool s_refused(void)
{
    const virError *e = virGetLastError();
    if (!e) return false;
    switch (e->code) {
    case VIR_ERR_NO_SUPPORT:
    case VIR_ERR_INVALID_ARG:
    case VIR_ERR_ARGUMENT_UNSUPPORTED:
    case VIR_ERR_OPERATION_UNSUPPORTED:
    case VIR_ERR_AGENT_UNRESPONSIVE:
    case VIR_ERR_AGENT_UNSYNCED:
        return true;
    default:
        return false;
    }
}

static const char *s_last_message(void)
{
    const virError *e = virGetLastError();
    return e && e->message ? e->message : "unknown libvirt error";
}

/* True when `uri` names this host (no host part after the scheme). */
static bool s_uri_local(const char *uri)
{
    const char *p = uri ? strstr(uri, "://") : NULL;
    return p && p[3] == '/';
}

bool titan_vm_uri_embedded(const char *uri)
{
    return uri && strncmp(uri, "qemu:///embed", 13) == 0;
}

void titan_vm_exit(int status)
{
    fflush(NULL);
    _exit(status);
}

virConnectPtr titan_vm_connect(const char *uri, char *err, size_t errcap)
{
    if (!uri || !*uri) uri = TITAN_VM_DEFAULT_URI;
    virResetLastError();
    virConnectPtr conn = virConnectOpen(uri);
    if (conn) return conn;
    const virError *e = virGetLastError();
    int rc = e ? s_errno_of(e->code) : -ECONNREFUSED;
    const char *hint;
    if (rc == -EACCES || (e && e->message && strstr(e->message, "ermission denied")))
        hint =
            "; are you in the libvirt group? (`sudo usermod -aG libvirt $USER`, then log in again), or run "
            "as root";
    else if (strncmp(uri, "qemu", 4) == 0)
        hint = "; is libvirtd (or virtqemud) running? (`systemctl status libvirtd`); are you in the libvirt "
               "group? Another URI: --connect URI or $TITAN_LIBVIRT_URI (e.g. qemu:///session)";
    else
        hint = "; check the URI (--connect URI or $TITAN_LIBVIRT_URI)";
    snprintf(err, errcap, "cannot connect to %s: %s%s", uri,
             e && e->message ? e->message : "unknown libvirt error", hint);
    errno = rc == -EIO ? ECONNREFUSED : -rc;
    return NULL;
}

/* --- small readers of libvirt's XML (its own canonical output, so plain scanning is enough) --- */

/* Copies attribute `attr` of the tag starting at `tag` (up to its '>') into out. Returns true when found. */
static bool s_attr(const char *tag, const char *attr, char *out, size_t cap)
{
    const char *end = strchr(tag, '>');
    if (!end) return false;
    size_t alen = strlen(attr);
    for (const char *p = tag; p && p < end; p++) {
        p = strstr(p, attr);
        if (!p || p >= end) return false;
        if ((p[-1] == ' ' || p[-1] == '\t' || p[-1] == '\n') && p[alen] == '=' &&
            (p[alen + 1] == '\'' || p[alen + 1] == '"')) {
            char q = p[alen + 1];
            const char *v = p + alen + 2;
            const char *ve = strchr(v, q);
            if (!ve || ve > end) return false;
            size_t n = (size_t)(ve - v);
            if (n >= cap) n = cap - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return true;
        }
    }
    return false;
}

/* Finds the element `<elem ...>` (or `<elem>`) starting at or after `from` and before `limit` (NULL: no
 * limit). Returns its '<', or NULL. */
static const char *s_find_elem(const char *from, const char *limit, const char *elem)
{
    size_t n = strlen(elem);
    for (const char *p = from; (p = strchr(p, '<')) && (!limit || p < limit); p++)
        if (strncmp(p + 1, elem, n) == 0 &&
            (p[n + 1] == ' ' || p[n + 1] == '>' || p[n + 1] == '/' || p[n + 1] == '\n' || p[n + 1] == '\t'))
            return p;
    return NULL;
}

/* Copies the text of the first <elem>TEXT</elem> into out. Returns true when found. */
static bool s_elem_text(const char *xml, const char *elem, char *out, size_t cap)
{
    const char *p = s_find_elem(xml, NULL, elem);
    if (!p || !(p = strchr(p, '>')) || p[-1] == '/') return false;
    p++;
    const char *e = strchr(p, '<');
    if (!e) return false;
    while (p < e && (*p == ' ' || *p == '\n' || *p == '\t'))
        p++;
    while (e > p && (e[-1] == ' ' || e[-1] == '\n' || e[-1] == '\t'))
        e--;
    size_t n = (size_t)(e - p);
    if (n >= cap) n = cap - 1;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

/* Reads an attribute written as a number in any base ("0x03", "3"). */
static bool s_attr_num(const char *tag, const char *attr, unsigned long *out)
{
    char v[32], *end = NULL;
    if (!s_attr(tag, attr, v, sizeof v)) return false;
    errno = 0;
    unsigned long n = strtoul(v, &end, 0);
    if (errno || end == v || *end) return false;
    *out = n;
    return true;
}

/* Fills addrs with the source PCI addresses of the domain's <hostdev type='pci'> entries. Returns the count.
 */
static int s_hostdevs(const char *xml, char (*addrs)[16], int max)
{
    int n = 0;
    const char *p = xml;
    while (n < max && (p = s_find_elem(p, NULL, "hostdev"))) {
        const char *end = strstr(p, "</hostdev>");
        char type[16];
        if (end && s_attr(p, "type", type, sizeof type) && strcmp(type, "pci") == 0) {
            const char *src = s_find_elem(p, end, "source");
            const char *a = src ? s_find_elem(src, end, "address") : NULL;
            unsigned long dom = 0, bus, slot, fn;
            if (a && s_attr_num(a, "bus", &bus) && s_attr_num(a, "slot", &slot) &&
                s_attr_num(a, "function", &fn)) {
                s_attr_num(a, "domain", &dom);
                snprintf(addrs[n], 16, "%04lx:%02lx:%02lx.%lx", dom & 0xffff, bus & 0xff, slot & 0x1f,
                         fn & 0x7);
                n++;
            }
        }
        p = end ? end : p + 1;
    }
    return n;
}

/* --- define --- */

/* Writes `s` into out with XML's special characters escaped. Returns false when it does not fit. */
static bool s_xml_escape(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    for (; *s; s++) {
        const char *r = NULL;
        switch (*s) {
        case '&':
            r = "&amp;";
            break;
        case '<':
            r = "&lt;";
            break;
        case '>':
            r = "&gt;";
            break;
        case '\'':
            r = "&apos;";
            break;
        case '"':
            r = "&quot;";
            break;
        default:
            break;
        }
        size_t n = r ? strlen(r) : 1;
        if (o + n >= cap) return false;
        if (r)
            memcpy(out + o, r, n);
        else
            out[o] = *s;
        o += n;
    }
    out[o] = '\0';
    return true;
}

static void s_fmt_size(uint64_t bytes, char *out, size_t cap)
{
    static const char *units[] = {"bytes", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    uint64_t v = bytes;
    while (u < 4 && v >= 1024 && v % 1024 == 0) {
        v /= 1024;
        u++;
    }
    snprintf(out, cap, "%llu %s", (unsigned long long)v, units[u]);
}

/* The storage pool whose target path is `dir`, or NULL (none, or the driver cannot say). */
static virStoragePoolPtr s_pool_for_dir(virConnectPtr conn, const char *dir)
{
    virStoragePoolPtr pool = virStoragePoolLookupByTargetPath(conn, dir);
    if (pool) return pool;
    /* Drivers without that call (the test driver, older ones): compare every pool's target path. */
    virStoragePoolPtr *pools = NULL;
    int n = virConnectListAllStoragePools(conn, &pools, 0);
    for (int i = 0; i < n; i++) {
        char *xml = pool ? NULL : virStoragePoolGetXMLDesc(pools[i], 0);
        const char *t = xml ? s_find_elem(xml, NULL, "target") : NULL;
        char path[PATH_MAX];
        if (t && s_elem_text(t, "path", path, sizeof path)) {
            size_t len = strlen(path);
            while (len > 1 && path[len - 1] == '/')
                path[--len] = '\0';
            if (strcmp(path, dir) == 0) {
                pool = pools[i];
                pools[i] = NULL;
            }
        }
        free(xml);
        if (pools[i]) virStoragePoolFree(pools[i]);
    }
    free(pools);
    virResetLastError();
    return pool;
}

/* Runs `qemu-img create -f FMT PATH SIZE` (no shell). Returns 0, or -errno with why in err. */
static int s_qemu_img(const titan_vmconf *c, char *err, size_t errcap)
{
    char size[32];
    snprintf(size, sizeof size, "%llu", (unsigned long long)c->disk_size_bytes);
    char *const argv[] = {"qemu-img",           "create", "-f", (char *)c->disk_format,
                          (char *)c->disk_path, size,     NULL};
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        int e = errno;
        snprintf(err, errcap, "cannot run qemu-img: %s", strerror(e));
        return -e;
    }
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        snprintf(err, errcap, "cannot run qemu-img: %s", strerror(e));
        return -e;
    }
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
        }
        dup2(pipefd[1], 2);
        execvp(argv[0], argv);
        _exit(errno == ENOENT ? 127 : 126);
    }
    close(pipefd[1]);
    char out[1024];
    size_t used = 0;
    for (;;) {
        ssize_t r = read(pipefd[0], out + used, sizeof out - 1 - used);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        used += (size_t)r;
        if (used == sizeof out - 1) { /* keep reading so that the child never blocks on a full pipe */
            char sink[256];
            while (read(pipefd[0], sink, sizeof sink) > 0) {
            }
            break;
        }
    }
    out[used] = '\0';
    close(pipefd[0]);
    while (used && (out[used - 1] == '\n' || out[used - 1] == '\r'))
        out[--used] = '\0';
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) {
            snprintf(err, errcap, "qemu-img: %s", strerror(errno));
            return -EIO;
        }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 127) {
        snprintf(
            err, errcap,
            "cannot create %s: qemu-img is missing (install it: Debian/Ubuntu qemu-utils, Fedora qemu-img, "
            "Arch qemu-img), or define a libvirt storage pool for its directory, or create the image "
            "yourself",
            c->disk_path);
        return -ENOENT;
    }
    snprintf(err, errcap, "qemu-img create -f %s %s %s failed (%s %d): %s", c->disk_format, c->disk_path,
             size, WIFEXITED(status) ? "exit status" : "signal",
             WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status), used ? out : "no message");
    return -EIO;
}

int titan_vm_ensure_disk(virConnectPtr conn, const titan_vmconf *c, titan_vm_say_fn say, void *arg, char *err,
                         size_t errcap)
{
    if (c->disk_size_bytes == 0 || !c->disk_path[0]) return 0;
    struct stat st;
    if (stat(c->disk_path, &st) == 0) return 0;
    const char *fmt = c->disk_format[0] ? c->disk_format : "qcow2";
    if (strcmp(fmt, "qcow2") != 0 && strcmp(fmt, "raw") != 0) {
        snprintf(err, errcap, "disk format \"%s\" is not qcow2 or raw", fmt);
        return -EINVAL;
    }
    char dir[sizeof c->disk_path];
    snprintf(dir, sizeof dir, "%s", c->disk_path);
    char *slash = strrchr(dir, '/');
    if (!slash || !slash[1]) {
        snprintf(err, errcap, "disk path \"%s\" is not an absolute file path", c->disk_path);
        return -EINVAL;
    }
    const char *base = slash + 1;
    if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    char base_copy[sizeof c->disk_path];
    snprintf(base_copy, sizeof base_copy, "%s", base);
    char size[48];
    s_fmt_size(c->disk_size_bytes, size, sizeof size);

    virStoragePoolPtr pool = s_pool_for_dir(conn, dir);
    if (pool && virStoragePoolIsActive(pool) != 1) {
        s_say(say, arg, true, "storage pool %s holds %s but is not active; using qemu-img instead",
              virStoragePoolGetName(pool), dir);
        virStoragePoolFree(pool);
        pool = NULL;
    }
    if (pool) {
        int rc = 0;
        virStoragePoolRefresh(pool, 0); /* a file made behind libvirt's back would otherwise be missed */
        virStorageVolPtr vol = virStorageVolLookupByName(pool, base_copy);
        virResetLastError();
        if (vol) {
            virStorageVolFree(vol);
            virStoragePoolFree(pool);
            return 0;
        }
        char name[3 * 256 + 1], xml[4096];
        if (!s_xml_escape(base_copy, name, sizeof name)) {
            snprintf(err, errcap, "disk file name \"%s\" is too long", base_copy);
            virStoragePoolFree(pool);
            return -ENAMETOOLONG;
        }
        snprintf(xml, sizeof xml,
                 "<volume><name>%s</name><capacity unit='bytes'>%llu</capacity>"
                 "<target><format type='%s'/></target></volume>",
                 name, (unsigned long long)c->disk_size_bytes, fmt);
        vol = virStorageVolCreateXML(pool, xml, 0);
        if (!vol)
            rc = s_fail(err, errcap, c->name, "cannot create the volume %s (%s) in storage pool %s",
                        c->disk_path, size, virStoragePoolGetName(pool));
        else
            s_say(say, arg, false, "created disk %s (%s, %s) in storage pool %s", c->disk_path, size, fmt,
                  virStoragePoolGetName(pool));
        if (vol) virStorageVolFree(vol);
        virStoragePoolFree(pool);
        return rc < 0 ? rc : 1;
    }
    char *uri = virConnectGetURI(conn);
    bool local = s_uri_local(uri);
    if (!local) {
        snprintf(
            err, errcap,
            "cannot create %s: no storage pool of %s covers %s, and qemu-img would make it on this host; "
            "define a pool for that directory there (virsh pool-define-as NAME dir --target %s) or create "
            "the image yourself",
            c->disk_path, uri ? uri : "the connection", dir, dir);
        free(uri);
        return -ENOENT;
    }
    free(uri);
    titan_vmconf tmp = *c;
    snprintf(tmp.disk_format, sizeof tmp.disk_format, "%s", fmt);
    int rc = s_qemu_img(&tmp, err, errcap);
    if (rc < 0) return rc;
    s_say(say, arg, false, "created disk %s (%s, %s) with qemu-img", c->disk_path, size, fmt);
    return 1;
}

int titan_vm_define_xml(virConnectPtr conn, const char *xml, titan_vm_say_fn say, void *arg, char *err,
                        size_t errcap)
{
    char name[256] = "";
    s_elem_text(xml, "name", name, sizeof name);
    virResetLastError();
    virDomainPtr old = name[0] ? virDomainLookupByName(conn, name) : NULL;
    bool isnew = !old;
    char *withuuid = NULL;
    /* XML without a <uuid> would get a fresh one, which libvirt refuses for a name it knows: keep the old. */
    const char *name_end = strstr(xml, "</name>");
    char uuid[VIR_UUID_STRING_BUFLEN];
    if (old && name_end && !s_find_elem(xml, NULL, "uuid") && virDomainGetUUIDString(old, uuid) == 0) {
        size_t head = (size_t)(name_end - xml) + strlen("</name>");
        if (asprintf(&withuuid, "%.*s<uuid>%s</uuid>%s", (int)head, xml, uuid, xml + head) < 0) {
            withuuid = NULL;
            virDomainFree(old);
            snprintf(err, errcap, "cannot define %s: out of memory", name);
            return -ENOMEM;
        }
    }
    if (old) virDomainFree(old);
    virResetLastError();
    virDomainPtr dom = virDomainDefineXML(conn, withuuid ? withuuid : xml);
    free(withuuid);
    if (!dom) return s_fail(err, errcap, name, "cannot define %s", name[0] ? name : "the domain");
    s_say(say, arg, false, "defined %s (%s)", virDomainGetName(dom), isnew ? "new" : "updated");
    virDomainFree(dom);
    return isnew ? 1 : 0;
}

int titan_vm_resolve_kvm(virConnectPtr conn, titan_vmconf *c, titan_vm_say_fn say, void *arg, char *err,
                         size_t errcap)
{
    if (c->kvm == TITAN_VM_KVM_OFF) {
        s_say(say, arg, false, "kvm: off: %s runs under QEMU's TCG emulation (no hardware acceleration)", c->name);
        return 0;
    }
    char *caps = virConnectGetDomainCapabilities(conn, NULL, "x86_64", c->machine[0] ? c->machine : NULL, "kvm", 0);
    if (caps) {
        free(caps);
        if (c->kvm == TITAN_VM_KVM_AUTO) c->kvm = TITAN_VM_KVM_ON;
        return 0;
    }
    const virError *e = virGetLastError();
    if (e && (e->code == VIR_ERR_NO_SUPPORT || e->code == VIR_ERR_RPC || e->code == VIR_ERR_NO_CONNECT)) {
        /* a driver that cannot say (libvirt's test driver): the domain asks for KVM, as before */
        if (c->kvm == TITAN_VM_KVM_AUTO) c->kvm = TITAN_VM_KVM_ON;
        return 0;
    }
    char why[512];
    snprintf(why, sizeof why, "%s", e && e->message ? e->message : "libvirt reports no KVM");
    if (c->kvm == TITAN_VM_KVM_ON) {
        snprintf(err, errcap,
                 "kvm: on, but this host's hypervisor offers no KVM (%s); check that /dev/kvm exists (the "
                 "kvm_intel or kvm_amd module, virtualization enabled in the firmware), or set kvm: auto or "
                 "off in vm.yaml to run under TCG emulation",
                 why);
        return -ENOTSUP;
    }
    c->kvm = TITAN_VM_KVM_OFF;
    s_say(say, arg, true,
          "kvm: auto: no KVM on this host (%s); %s will run under QEMU's TCG emulation, many times slower. "
          "GPU passthrough needs KVM: check /dev/kvm (the kvm_intel or kvm_amd module, virtualization enabled "
          "in the firmware), then define again",
          why, c->name);
    return 0;
}

int titan_vm_define(virConnectPtr conn, const titan_vmconf *c, titan_vm_say_fn say, void *arg, char *err,
                    size_t errcap)
{
    char *xml = titan_vmconf_xml(c);
    if (!xml) {
        snprintf(err, errcap,
                 "cannot make the domain XML of %s (out of memory, or this build cannot make it yet)",
                 c->name);
        return -ENOMEM;
    }
    int rc = titan_vm_ensure_disk(conn, c, say, arg, err, errcap);
    if (rc >= 0) rc = titan_vm_define_xml(conn, xml, say, arg, err, errcap);
    free(xml);
    return rc;
}

/* --- start, stop --- */

/* Looks `name` up. Returns the domain, or NULL with why in err and *rc. */
static virDomainPtr s_lookup(virConnectPtr conn, const char *name, int *rc, char *err, size_t errcap)
{
    virResetLastError();
    virDomainPtr dom = virDomainLookupByName(conn, name);
    if (!dom) *rc = s_fail(err, errcap, name, "no domain %s", name);
    return dom;
}

/* After a failed start on this host: when a PCI device the domain passes through does not exist here,
 * err says so first (libvirt's own message names a sysfs path, or only a device it could not open). */
static void s_missing_hostdevs(virConnectPtr conn, virDomainPtr dom, char *err, size_t errcap)
{
    char *uri = virConnectGetURI(conn);
    bool local = uri && s_uri_local(uri) && strncmp(uri, "test:", 5) != 0;
    free(uri);
    if (!local) return;
    char *xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
    if (!xml) return;
    char addrs[TITAN_VM_MAX_GPUS][16];
    int n = s_hostdevs(xml, addrs, TITAN_VM_MAX_GPUS);
    free(xml);
    char missing[TITAN_VM_MAX_GPUS * 16 + 16] = "";
    int nmissing = 0;
    for (int i = 0; i < n; i++) {
        char path[64];
        snprintf(path, sizeof path, "/sys/bus/pci/devices/%.15s", addrs[i]);
        if (access(path, F_OK) == 0) continue;
        size_t len = strlen(missing);
        snprintf(missing + len, sizeof missing - len, "%s%s", nmissing ? ", " : "", addrs[i]);
        nmissing++;
    }
    if (!nmissing) return;
    char *was = strdup(err);
    snprintf(err, errcap,
             "the PCI device%s %s that vm.yaml passes through %s not exist on this host (no "
             "/sys/bus/pci/devices/%s): see `titan host check` for the GPU's address, then fix gpu: in vm.yaml "
             "and define again. libvirt said: %s",
             nmissing > 1 ? "s" : "", missing, nmissing > 1 ? "do" : "does", addrs[0], was ? was : "");
    free(was);
}

int titan_vm_start(virConnectPtr conn, const char *name, char *err, size_t errcap)
{
    int rc = 0;
    virDomainPtr dom = s_lookup(conn, name, &rc, err, errcap);
    if (!dom) return rc;
    int active = virDomainIsActive(dom);
    if (active < 0) {
        rc = s_fail(err, errcap, name, "cannot read the state of %s", name);
    } else if (active == 1) {
        rc = 1;
    } else if (virDomainCreate(dom) < 0) {
        rc = s_fail(err, errcap, name, "cannot start %s", name);
        if (virDomainIsActive(dom) == 1) {
            rc = 1; /* someone else started it meanwhile */
        } else {
            s_missing_hostdevs(conn, dom, err, errcap);
        }
    }
    virDomainFree(dom);
    return rc;
}

static void s_lifecycle_timer(int timer, void *opaque) {}

static int s_lifecycle_event(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *opaque)
{
    (*(int *)opaque)++;
    return 0;
}

static const char *s_method_name(unsigned int flag)
{
    switch (flag) {
    case VIR_DOMAIN_SHUTDOWN_GUEST_AGENT:
        return "the guest agent";
    case VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN:
        return "the ACPI power button";
    default:
        return "the driver's default shutdown";
    }
}

static void s_fmt_seconds(int ms, char *out, size_t cap)
{
    if (ms % 1000 == 0)
        snprintf(out, cap, "%d s", ms / 1000);
    else
        snprintf(out, cap, "%.1f s", ms / 1000.0);
}

int titan_vm_stop(virConnectPtr conn, const char *name, int timeout_ms, titan_vm_say_fn say, void *arg,
                  titan_vm_stop_result *result, char *err, size_t errcap)
{
    int rc = 0;
    char *xml = NULL;
    int timer = -1, cbid = -1, events = 0;
    bool use_events = false;
    virDomainPtr dom = s_lookup(conn, name, &rc, err, errcap);
    if (!dom) return rc;
    int active = virDomainIsActive(dom);
    if (active < 0) {
        rc = s_fail(err, errcap, name, "cannot read the state of %s", name);
        goto out;
    }
    if (active == 0) {
        *result = TITAN_VM_WAS_OFF;
        goto out;
    }
    xml = virDomainGetXMLDesc(dom, 0);
    bool agent = xml && strstr(xml, "org.qemu.guest_agent.0");

    /* Listen before asking, so that a quick power-off cannot slip by unseen. */
    if (s_default_loop) {
        timer = virEventAddTimeout(S_RECHECK_MS, s_lifecycle_timer, NULL, NULL);
        if (timer >= 0)
            cbid =
                virConnectDomainEventRegisterAny(conn, dom, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                 VIR_DOMAIN_EVENT_CALLBACK(s_lifecycle_event), &events, NULL);
        use_events = cbid >= 0;
        virResetLastError();
    }

    unsigned int methods[3];
    int nmethods = 0;
    if (agent) methods[nmethods++] = VIR_DOMAIN_SHUTDOWN_GUEST_AGENT;
    methods[nmethods++] = VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN;
    methods[nmethods++] = 0;
    int used = -1;
    for (int i = 0; i < nmethods && used < 0; i++) {
        virResetLastError();
        if (virDomainShutdownFlags(dom, methods[i]) == 0) {
            used = i;
            break;
        }
        bool refused = s_refused();
        char why[512];
        snprintf(why, sizeof why, "%s", s_last_message());
        if (i + 1 < nmethods && refused) {
            s_say(say, arg, true, "the driver refused %s (%s); trying %s instead", s_method_name(methods[i]),
                  why, s_method_name(methods[i + 1]));
            continue;
        }
        rc = s_fail(err, errcap, name, "cannot shut %s down with %s", name, s_method_name(methods[i]));
        if (virDomainIsActive(dom) == 0) { /* it went off meanwhile */
            rc = 0;
            break;
        }
        goto out;
    }
    char limit[32];
    s_fmt_seconds(timeout_ms, limit, sizeof limit);
    if (used >= 0)
        s_say(say, arg, false, "asked %s to shut down (%s); waiting up to %s%s", name,
              s_method_name(methods[used]), limit, use_events ? "" : " (polling)");

    double deadline = titan_clock_mono_s() + timeout_ms / 1000.0;
    for (;;) {
        active = virDomainIsActive(dom);
        if (active == 0) {
            *result = TITAN_VM_STOPPED_CLEANLY;
            goto out;
        }
        if (active < 0) {
            rc = s_fail(err, errcap, name, "cannot read the state of %s", name);
            goto out;
        }
        double left_ms = (deadline - titan_clock_mono_s()) * 1000.0;
        if (left_ms <= 0) break;
        if (use_events) {
            int wait = left_ms < S_RECHECK_MS ? (int)left_ms + 1 : S_RECHECK_MS;
            virEventUpdateTimeout(timer, wait);
            if (virEventRunDefaultImpl() < 0) use_events = false; /* the loop failed: poll from now on */
        } else {
            int wait = left_ms < S_POLL_MS ? (int)left_ms + 1 : S_POLL_MS;
            usleep((useconds_t)wait * 1000);
        }
    }
    virResetLastError();
    if (virDomainDestroy(dom) < 0) {
        if (virDomainIsActive(dom) == 0) { /* it powered off just at the deadline */
            *result = TITAN_VM_STOPPED_CLEANLY;
            goto out;
        }
        rc = s_fail(err, errcap, name, "%s is still running after %s and cannot be destroyed", name, limit);
        goto out;
    }
    s_say(say, arg, true, "still running after %s: destroyed", limit);
    *result = TITAN_VM_DESTROYED;
out:
    if (cbid >= 0) virConnectDomainEventDeregisterAny(conn, cbid);
    if (timer >= 0) virEventRemoveTimeout(timer);
    free(xml);
    virDomainFree(dom);
    return rc;
}

/* --- status --- */

static const char *s_state_name(int st)
{
    switch (st) {
    case VIR_DOMAIN_NOSTATE:
        return "nostate";
    case VIR_DOMAIN_RUNNING:
        return "running";
    case VIR_DOMAIN_BLOCKED:
        return "blocked";
    case VIR_DOMAIN_PAUSED:
        return "paused";
    case VIR_DOMAIN_SHUTDOWN:
        return "shutting-down";
    case VIR_DOMAIN_SHUTOFF:
        return "shutoff";
    case VIR_DOMAIN_CRASHED:
        return "crashed";
    case VIR_DOMAIN_PMSUSPENDED:
        return "pmsuspended";
    default:
        return "unknown";
    }
}

static void s_reason_name(int st, int reason, char *out, size_t cap)
{
    static const char *running[] = {"unknown",       "booted",   "migrated",           "restored",
                                    "from-snapshot", "unpaused", "migration-canceled", "save-canceled",
                                    "wakeup",        "crashed",  "postcopy",           "postcopy-failed"};
    static const char *paused[] = {"unknown",       "user",
                                   "migration",     "save",
                                   "dump",          "ioerror",
                                   "watchdog",      "from-snapshot",
                                   "shutting-down", "snapshot",
                                   "crashed",       "starting-up",
                                   "postcopy",      "postcopy-failed",
                                   "api-error"};
    static const char *shutdown[] = {"unknown", "user"};
    static const char *shutoff[] = {"unknown", "shutdown", "destroyed",     "crashed", "migrated",
                                    "saved",   "failed",   "from-snapshot", "daemon"};
    static const char *crashed[] = {"unknown", "panicked"};
    const char **t = NULL;
    size_t n = 0;
#define S_TABLE(a) (t = (a), n = sizeof(a) / sizeof((a)[0]))
    switch (st) {
    case VIR_DOMAIN_RUNNING:
        S_TABLE(running);
        break;
    case VIR_DOMAIN_PAUSED:
        S_TABLE(paused);
        break;
    case VIR_DOMAIN_SHUTDOWN:
        S_TABLE(shutdown);
        break;
    case VIR_DOMAIN_SHUTOFF:
        S_TABLE(shutoff);
        break;
    case VIR_DOMAIN_CRASHED:
        S_TABLE(crashed);
        break;
    default:
        break;
    }
#undef S_TABLE
    if (t && reason >= 0 && (size_t)reason < n)
        snprintf(out, cap, "%s", t[reason]);
    else if (reason == 0)
        snprintf(out, cap, "unknown");
    else
        snprintf(out, cap, "reason-%d", reason);
}

int titan_vm_process_uptime(pid_t pid, double *out)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -errno;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name (field 2) may hold spaces and parentheses: count fields after its last ')'. */
    char *p = strrchr(buf, ')');
    if (!p) return -EINVAL;
    p++;
    unsigned long long start = 0;
    for (int field = 3; field <= 22; field++) {
        while (*p == ' ')
            p++;
        if (!*p) return -EINVAL;
        if (field == 22) {
            char *end;
            start = strtoull(p, &end, 10);
            if (end == p) return -EINVAL;
            break;
        }
        while (*p && *p != ' ')
            p++;
    }
    f = fopen("/proc/uptime", "r");
    if (!f) return -errno;
    double up = -1;
    int got = fscanf(f, "%lf", &up);
    fclose(f);
    long hz = sysconf(_SC_CLK_TCK);
    if (got != 1 || hz <= 0) return -EINVAL;
    double age = up - (double)start / (double)hz;
    *out = age < 0 ? 0 : age;
    return 0;
}

/* Seconds since the QEMU process of `name` started, or -1 when unknown (not QEMU, a remote host, no
 * readable pid file). */
static double s_qemu_uptime(virConnectPtr conn, const char *name)
{
    const char *type = virConnectGetType(conn);
    char *uri = virConnectGetURI(conn);
    double up = -1;
    char path[PATH_MAX] = "";
    if (type && strcmp(type, "QEMU") == 0 && uri && s_uri_local(uri)) {
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        if (strncmp(uri, "qemu:///system", 14) == 0)
            snprintf(path, sizeof path, "/run/libvirt/qemu/%s.pid", name);
        else if (strncmp(uri, "qemu:///session", 15) == 0 && xdg && *xdg)
            snprintf(path, sizeof path, "%s/libvirt/qemu/run/%s.pid", xdg, name);
        else if (strncmp(uri, "qemu:///embed?root=/", 20) == 0 && !strpbrk(uri + 19, "&%"))
            snprintf(path, sizeof path, "%s/run/qemu/%s.pid", uri + 19, name); /* the embedded driver's root */
    }
    FILE *f = path[0] ? fopen(path, "r") : NULL;
    int pid = 0;
    if (f) {
        if (fscanf(f, "%d", &pid) != 1) pid = 0;
        fclose(f);
    }
    if (pid <= 0 || titan_vm_process_uptime(pid, &up) < 0) {
        struct stat st;
        /* The pid file is written as QEMU starts: its age is the next best thing. */
        if (path[0] && stat(path, &st) == 0)
            up = (double)(titan_clock_wall_ts().tv_sec - st.st_mtim.tv_sec);
        else
            up = -1;
    }
    free(uri);
    virResetLastError();
    return up;
}

int titan_vm_status_get(virConnectPtr conn, const char *name, titan_vm_status *out, char *err, size_t errcap)
{
    int rc = 0;
    char *xml = NULL;
    titan_vm_status s;
    memset(&s, 0, sizeof s);
    virDomainPtr dom = s_lookup(conn, name, &rc, err, errcap);
    if (!dom) return rc;
    int st = 0, reason = 0, autostart = 0;
    virDomainInfo info;
    if (virDomainGetState(dom, &st, &reason, 0) < 0 || virDomainGetInfo(dom, &info) < 0) {
        rc = s_fail(err, errcap, name, "cannot read the state of %s", name);
        goto out;
    }
    xml = virDomainGetXMLDesc(dom, 0);
    if (!xml) {
        rc = s_fail(err, errcap, name, "cannot read the definition of %s", name);
        goto out;
    }
    snprintf(s.name, sizeof s.name, "%s", virDomainGetName(dom));
    snprintf(s.state, sizeof s.state, "%s", s_state_name(st));
    s_reason_name(st, reason, s.reason, sizeof s.reason);
    s.persistent = virDomainIsPersistent(dom) == 1;
    s.autostart = virDomainGetAutostart(dom, &autostart) == 0 && autostart;
    s.vcpus = info.nrVirtCpu;
    s.memory_kib = info.maxMem;
    s.nhostdevs = s_hostdevs(xml, s.hostdevs, (int)(sizeof s.hostdevs / sizeof s.hostdevs[0]));
    s.uptime_s = virDomainIsActive(dom) == 1 ? s_qemu_uptime(conn, s.name) : -1;
    virResetLastError();
    *out = s;
out:
    free(xml);
    virDomainFree(dom);
    return rc;
}

int titan_vm_autostart(virConnectPtr conn, const char *name, bool on, char *err, size_t errcap)
{
    int rc = 0;
    virDomainPtr dom = s_lookup(conn, name, &rc, err, errcap);
    if (!dom) return rc;
    if (virDomainSetAutostart(dom, on ? 1 : 0) < 0)
        rc = s_fail(err, errcap, name, "cannot turn autostart %s for %s", on ? "on" : "off", name);
    virDomainFree(dom);
    return rc;
}

/* Says where each disk of the domain XML `xml` stays. */
static void s_say_disks(const char *xml, titan_vm_say_fn say, void *arg)
{
    const char *p = xml;
    while ((p = s_find_elem(p, NULL, "disk"))) {
        const char *end = strstr(p, "</disk>");
        char device[16] = "disk", path[PATH_MAX], pool[256], vol[256];
        s_attr(p, "device", device, sizeof device);
        const char *src = s_find_elem(p, end, "source");
        if (src && strcmp(device, "disk") == 0) {
            if (s_attr(src, "file", path, sizeof path) || s_attr(src, "dev", path, sizeof path))
                s_say(say, arg, false, "kept its disk %s", path);
            else if (s_attr(src, "pool", pool, sizeof pool) && s_attr(src, "volume", vol, sizeof vol))
                s_say(say, arg, false, "kept its disk: volume %s of storage pool %s", vol, pool);
        }
        if (!end) break;
        p = end;
    }
}

int titan_vm_undefine(virConnectPtr conn, const char *name, bool force, titan_vm_say_fn say, void *arg,
                      char *err, size_t errcap)
{
    int rc = 0;
    char *xml = NULL;
    virDomainPtr dom = s_lookup(conn, name, &rc, err, errcap);
    if (!dom) return rc;
    int active = virDomainIsActive(dom);
    int persistent = virDomainIsPersistent(dom);
    if (active < 0 || persistent < 0) {
        rc = s_fail(err, errcap, name, "cannot read the state of %s", name);
        goto out;
    }
    if (active && !force) {
        snprintf(
            err, errcap,
            "%s is running; stop it first (`titan vm stop %s`), or pass --force to destroy it and undefine "
            "it",
            name, name);
        rc = -EBUSY;
        goto out;
    }
    xml = virDomainGetXMLDesc(dom, VIR_DOMAIN_XML_INACTIVE);
    if (active) {
        virResetLastError();
        if (virDomainDestroy(dom) < 0 && virDomainIsActive(dom) != 0) {
            rc = s_fail(err, errcap, name, "cannot destroy %s", name);
            goto out;
        }
        s_say(say, arg, true, "%s was running: destroyed", name);
        if (!persistent) { /* a transient domain is gone once it stops */
            s_say(say, arg, false, "undefined %s (it was transient)", name);
            if (xml) s_say_disks(xml, say, arg);
            goto out;
        }
    } else if (!persistent) {
        snprintf(err, errcap, "%s is not defined (a transient domain that is not running)", name);
        rc = -ENOENT;
        goto out;
    }
    char nvram[PATH_MAX] = "";
    bool has_nvram = xml && s_elem_text(xml, "nvram", nvram, sizeof nvram);
    virResetLastError();
    if (virDomainUndefineFlags(dom, VIR_DOMAIN_UNDEFINE_NVRAM | VIR_DOMAIN_UNDEFINE_MANAGED_SAVE) == 0) {
        s_say(say, arg, false, "undefined %s", name);
        if (has_nvram) s_say(say, arg, false, "removed its NVRAM %s", nvram);
    } else if (s_refused()) {
        s_say(say, arg, true, "the driver cannot undefine with its NVRAM (%s); undefining %s plainly",
              s_last_message(), name);
        virResetLastError();
        if (virDomainUndefine(dom) < 0) {
            rc = s_fail(err, errcap, name, "cannot undefine %s", name);
            goto out;
        }
        s_say(say, arg, false, "undefined %s", name);
        if (has_nvram) s_say(say, arg, false, "kept its NVRAM %s", nvram);
    } else {
        rc = s_fail(err, errcap, name, "cannot undefine %s", name);
        goto out;
    }
    if (xml) s_say_disks(xml, say, arg);
out:
    free(xml);
    virDomainFree(dom);
    return rc;
}
