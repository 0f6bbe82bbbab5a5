// torchscript.cpp - the TorchScript model runner: libtorch behind the C runner ABI (runner.h).
#include <torch/cuda.h>
#include <torch/script.h>
#include <torch/version.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

extern "C" {
#include "runner.h"
}

namespace {

struct ts_model {
    torch::jit::script::Module module;
    torch::Device device{torch::kCPU};
};

bool s_cuda_ok()
{
    try {
        return torch::cuda::is_available();
    } catch (...) {
        return false;
    }
}

// Appends `src` to `dst` within a buffer of `cap` bytes (NUL included); a cut end becomes "...".
void s_cat(char *dst, size_t cap, const std::string &src)
{
    size_t len = strlen(dst);
    if (len + 1 >= cap) return;
    size_t room = cap - len - 1;
    if (src.size() <= room) {
        memcpy(dst + len, src.data(), src.size());
        dst[len + src.size()] = '\0';
    } else if (room > 3) {
        memcpy(dst + len, src.data(), room - 3);
        memcpy(dst + len + room - 3, "...", 4);
    }
}

std::vector<std::string> s_lines(const std::string &text)
{
    std::vector<std::string> v;
    size_t at = 0;
    while (at <= text.size()) {
        size_t nl = text.find('\n', at);
        if (nl == std::string::npos) nl = text.size();
        std::string l = text.substr(at, nl - at);
        while (!l.empty() && (l.back() == '\r' || l.back() == ' ')) l.pop_back();
        v.push_back(l);
        at = nl + 1;
    }
    return v;
}

// "RuntimeError: ..." or "builtins.ValueError: ...": the exception line that ends a TorchScript traceback.
bool s_is_exception_line(const std::string &l)
{
    size_t colon = l.find(": ");
    if (colon == std::string::npos || colon == 0) return false;
    for (size_t i = 0; i < colon; i++) {
        char c = l[i];
        bool digit_or_dot = (c >= '0' && c <= '9') || c == '.';
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || (i && digit_or_dot))) return false;
    }
    return true;
}

// Writes the meaningful part of an exception's text into err: its cause first, then as much of its context
// as fits. A failure inside the TorchScript interpreter reads "The following operation failed in the
// TorchScript interpreter.", a traceback (each frame: a File line, code, "~~~ <--- HERE"), and at the end
// "RuntimeError: index out of range in self": that last part is the cause, the innermost frame the context.
// Any other message (c10's without its C++ backtrace) is kept whole, its lines joined.
void s_describe_error(const std::string &text, char *err, size_t errcap)
{
    if (!errcap) return;
    err[0] = '\0';
    std::vector<std::string> lines = s_lines(text);
    const std::string interp = "The following operation failed in the TorchScript interpreter.";
    size_t from = 0;
    std::string frame;
    if (!lines.empty() && lines[0] == interp) {
        size_t here = 0, cause = 0;
        for (size_t i = 0; i < lines.size(); i++) {
            if (lines[i].find("<--- HERE") != std::string::npos) here = i;
            if (lines[i].compare(0, 7, "  File ") == 0) frame = lines[i].substr(2);
        }
        for (size_t i = here + 1; i < lines.size() && !cause; i++)
            if (s_is_exception_line(lines[i])) cause = i;
        if (!cause) // no exception line where expected: the last non-empty line is the best guess
            for (size_t i = lines.size(); i-- > 1 && !cause;)
                if (!lines[i].empty()) cause = i;
        from = cause ? cause : 0;
    }
    std::string msg;
    for (size_t i = from; i < lines.size(); i++) {
        size_t b = lines[i].find_first_not_of(' ');
        if (b == std::string::npos) continue;
        if (!msg.empty()) msg += ' ';
        msg += lines[i].substr(b);
    }
    if (msg.empty()) msg = "unknown error";
    s_cat(err, errcap, msg);
    if (from == 0) return;
    // The context, whole or not at all: the interpreter, and the innermost frame when it fits too.
    std::string plain = " (in the TorchScript interpreter)";
    std::string with_frame = " (in the TorchScript interpreter, at " + frame + ")";
    size_t room = errcap - strlen(err) - 1;
    if (!frame.empty() && with_frame.size() <= room) s_cat(err, errcap, with_frame);
    else if (plain.size() <= room) s_cat(err, errcap, plain);
}

void s_describe_exception(const std::exception &e, char *err, size_t errcap)
{
    // c10's what() carries a C++ backtrace: the message alone is what_without_backtrace().
    auto *ce = dynamic_cast<const c10::Error *>(&e);
    s_describe_error(ce ? ce->what_without_backtrace() : e.what(), err, errcap);
}

void *s_load(const char *path, const char *device, char *err, size_t errcap)
{
    try {
        auto m = std::make_unique<ts_model>();
        std::string dev = device ? device : "auto";
        if (dev == "cuda" && !s_cuda_ok()) {
            snprintf(err, errcap, "device \"cuda\" asked for, but this libtorch has no usable CUDA device");
            return nullptr;
        }
        if (dev == "cuda" || (dev == "auto" && s_cuda_ok())) m->device = torch::Device(torch::kCUDA);
        m->module = torch::jit::load(path, m->device);
        m->module.eval();
        return m.release();
    } catch (const std::exception &e) {
        s_describe_exception(e, err, errcap);
    } catch (...) {
        snprintf(err, errcap, "unknown error");
    }
    return nullptr;
}

int s_to_output(const at::Tensor &t0, titan_runner_tensor *o, char *err, size_t errcap)
{
    at::Tensor t = t0.to(torch::kCPU);
    if (t.scalar_type() != torch::kFloat && t.scalar_type() != torch::kDouble) t = t.to(torch::kFloat);
    t = t.contiguous();
    if (t.dim() > TITAN_MAX_RANK) {
        snprintf(err, errcap, "an output has %d dimensions, more than %d", (int)t.dim(), TITAN_MAX_RANK);
        return -1;
    }
    memset(o, 0, sizeof(*o));
    o->dtype = t.scalar_type() == torch::kDouble ? TITAN_DTYPE_FLOAT64 : TITAN_DTYPE_FLOAT32;
    o->rank = (int)t.dim();
    for (int i = 0; i < o->rank; i++) o->shape[i] = t.size(i);
    o->bytes = (size_t)t.numel() * t.element_size();
    o->data = aligned_alloc(64, (o->bytes + 63) & ~(size_t)63);
    if (!o->data && o->bytes) {
        snprintf(err, errcap, "out of memory for an output of %zu bytes", o->bytes);
        return -1;
    }
    if (o->bytes) memcpy(o->data, t.data_ptr(), o->bytes);
    return 0;
}

int s_infer(void *model, const titan_runner_tensor *inputs, int ninputs, titan_runner_tensor *outputs,
            int max_outputs, int *noutputs, char *err, size_t errcap)
{
    auto *m = static_cast<ts_model *>(model);
    int n = 0;
    try {
        at::NoGradGuard no_grad;
        std::vector<torch::jit::IValue> args;
        for (int i = 0; i < ninputs; i++) {
            std::vector<int64_t> shape(inputs[i].shape, inputs[i].shape + inputs[i].rank);
            auto dt = inputs[i].dtype == TITAN_DTYPE_FLOAT64 ? torch::kDouble : torch::kFloat;
            // The buffer is borrowed (maybe a ZeroMQ frame): the model gets its own copy.
            args.emplace_back(torch::from_blob(inputs[i].data, shape, dt).to(m->device, false, true));
        }
        torch::jit::IValue r = m->module.forward(args);
        std::vector<at::Tensor> outs;
        if (r.isTensor()) {
            outs.push_back(r.toTensor());
        } else if (r.isTuple()) {
            for (auto &e : r.toTuple()->elements()) {
                if (!e.isTensor()) throw std::runtime_error("the model returned a tuple holding a non-tensor");
                outs.push_back(e.toTensor());
            }
        } else if (r.isTensorList()) {
            for (const at::Tensor &t : r.toTensorVector()) outs.push_back(t);
        } else {
            throw std::runtime_error("the model returned " + r.tagKind() + ", not tensors");
        }
        if ((int)outs.size() > max_outputs) {
            snprintf(err, errcap, "the model returned %zu outputs, more than %d", outs.size(), max_outputs);
            return -1;
        }
        for (auto &t : outs) {
            if (s_to_output(t, &outputs[n], err, errcap)) goto fail;
            n++;
        }
        *noutputs = n;
        return 0;
    } catch (const std::exception &e) {
        s_describe_exception(e, err, errcap);
    } catch (...) {
        snprintf(err, errcap, "unknown error");
    }
fail:
    for (int i = 0; i < n; i++) free(outputs[i].data);
    return -1;
}

void s_unload(void *model)
{
    delete static_cast<ts_model *>(model);
}

void s_describe(char *buf, size_t cap)
{
    snprintf(buf, cap, "libtorch %s, %s", TORCH_VERSION, s_cuda_ok() ? "cuda" : "cpu");
}

} // namespace

extern "C" const titan_runner titan_runner_torchscript = {"torchscript", s_load, s_infer, s_unload, s_describe};
