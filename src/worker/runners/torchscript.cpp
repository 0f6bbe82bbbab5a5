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
        std::string msg = e.what();
        msg = msg.substr(0, msg.find('\n'));
        snprintf(err, errcap, "%s", msg.c_str());
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
        std::string msg = e.what();
        msg = msg.substr(0, msg.find('\n'));
        snprintf(err, errcap, "%s", msg.c_str());
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
