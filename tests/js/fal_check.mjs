// fal's official JavaScript client (@fal-ai/client, pinned in package.json) against the emulator.
//
// Driven by tests/integration/test_emulator_fal_js.py: `node fal_check.mjs <scenario>` with
// EMU_URL (the emulator's base URL) and MEDIA (a small mp4) in the environment. Prints one JSON
// object of what the client saw; the Python test asserts on it. Nothing here is our code: where
// the client and the emulator disagree, the emulator is wrong until proven otherwise.
//
// The client hard-codes fal's hosts (request.ts `https://${subdomain}fal.run`, config.ts
// `getRestApiUrl()` = https://rest.fal.ai), so its `fetch` option (config.ts) sends those hosts to
// the emulator; every other URL (upload targets, file URLs) is the emulator's own already.

import { readFileSync } from "node:fs";
import { createHash } from "node:crypto";
import { ApiError, ValidationError, createFalClient } from "@fal-ai/client";

const EMU = process.env.EMU_URL;
const FAL_HOSTS = /^https:\/\/(queue\.fal\.run|fal\.run|rest\.fal\.ai)(?=[/?]|$)/;
const T2V = "luma/agent/ray/v3.2/text-to-video";
const REFRAME = "fal-ai/luma-dream-machine/ray-2-flash/reframe";

const requests = []; // every URL the client fetched, after rewriting, for the test to inspect
const toEmulator = (input, init) => {
  const url = String(input instanceof Request ? input.url : input).replace(FAL_HOSTS, EMU);
  requests.push(`${(init?.method ?? "GET").toUpperCase()} ${url.slice(EMU.length)}`);
  return fetch(url, init);
};
const fal = createFalClient({ credentials: "js-check-key", fetch: toEmulator });

const sha256 = (bytes) => createHash("sha256").update(bytes).digest("hex");
const clip = () => new File([readFileSync(process.env.MEDIA)], "clip.mp4", { type: "video/mp4" });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function download(url) {
  const resp = await fetch(url);
  const bytes = Buffer.from(await resp.arrayBuffer());
  return { status: resp.status, size: bytes.length, sha256: sha256(bytes) };
}

function errorFacts(error) {
  return {
    name: error?.name, isApiError: error instanceof ApiError, isValidationError: error instanceof ValidationError,
    status: error?.status, body: error?.body, requestId: error?.requestId, isUserTimeout: error?.isUserTimeout,
    fieldErrors: error instanceof ValidationError ? error.fieldErrors : undefined, message: String(error?.message),
  };
}

async function waitFor(endpoint, requestId, state) {
  for (let i = 0; i < 400; i++) {
    const status = await fal.queue.status(endpoint, { requestId });
    if (status.status === state || status.status === "COMPLETED") return status;
    await sleep(25);
  }
  throw new Error(`request ${requestId} never reached ${state}`);
}

const scenarios = {
  // storage.ts: POST rest/storage/upload/initiate?storage_type=fal-cdn-v3, then PUT the bytes
  async upload() {
    const file = clip();
    const url = await fal.storage.upload(file);
    return { url, sent: { size: file.size, sha256: sha256(Buffer.from(await file.arrayBuffer())) },
             got: await download(url), requests };
  },

  // storage.ts: above 90 MiB, initiate-multipart, 10 MiB parts PUT to `${upload_url}/{n}`, then /complete
  async upload_multipart() {
    const size = 91 * 1024 * 1024;
    const bytes = Buffer.alloc(size);
    for (let i = 0; i < size; i += 4096) bytes.writeUInt32LE(i, i); // not all zeros: parts must line up
    const url = await fal.storage.upload(new File([bytes], "big.bin", { type: "application/octet-stream" }));
    return { url, sent: { size, sha256: sha256(bytes) }, got: await download(url),
             requests: requests.filter((r) => !r.startsWith("PUT") || r.endsWith("/1") || r.includes("complete")) };
  },

  // queue.ts: submit, status (logs), streamStatus until COMPLETED, result
  async queue() {
    const submitted = await fal.queue.submit(T2V, { input: { prompt: "fal-js queue check" } });
    const { request_id: requestId } = submitted;
    const first = await fal.queue.status(T2V, { requestId, logs: true });
    const stream = await fal.queue.streamStatus(T2V, { requestId, logs: true });
    const streamed = [];
    stream.on("data", (s) => streamed.push(s.status));
    const done = await stream.done();
    const after = await fal.queue.status(T2V, { requestId, logs: true });
    const result = await fal.queue.result(T2V, { requestId });
    return { submitted, first: first.status, streamed, done: done.status, after,
             result: { requestId: result.requestId, video: result.data.video }, requests };
  },

  // queue.ts cancel: a queued request (OK) and a running one (CANCELLATION_REQUESTED)
  async cancel() {
    const running = (await fal.queue.submit(T2V, { input: { prompt: "runs" } })).request_id;
    const queued = (await fal.queue.submit(T2V, { input: { prompt: "waits" } })).request_id;
    await waitFor(T2V, running, "IN_PROGRESS");
    const queuedBefore = await fal.queue.status(T2V, { requestId: queued });
    await fal.queue.cancel(T2V, { requestId: queued });
    await fal.queue.cancel(T2V, { requestId: running });
    const ends = {};
    for (const [name, requestId] of Object.entries({ queued, running })) {
      const status = await waitFor(T2V, requestId, "COMPLETED");
      let result;
      try {
        result = { data: (await fal.queue.result(T2V, { requestId })).data };
      } catch (error) {
        result = errorFacts(error);
      }
      ends[name] = { status, result };
    }
    let again;
    try {
      await fal.queue.cancel(T2V, { requestId: queued });
    } catch (error) {
      again = errorFacts(error);
    }
    return { queuedBefore, ends, again, requests };
  },

  // client.ts subscribe, default (polling) mode, on a clip uploaded first
  async subscribe_polling() {
    const videoUrl = await fal.storage.upload(clip());
    const updates = [];
    const result = await fal.subscribe(REFRAME, {
      input: { video_url: videoUrl, aspect_ratio: "9:16" }, mode: "polling", pollInterval: 20, logs: true,
      onQueueUpdate: (s) => updates.push({ status: s.status, logs: (s.logs ?? []).length }),
    });
    return { requestId: result.requestId, video: result.data.video, updates, requests };
  },

  // client.ts subscribe, streaming mode; the File input is uploaded by the client itself (transformInput)
  async subscribe_streaming() {
    const updates = [];
    const result = await fal.subscribe(REFRAME, {
      input: { video_url: clip(), aspect_ratio: "1:1" }, mode: "streaming", logs: true,
      onQueueUpdate: (s) => updates.push({ status: s.status, logs: (s.logs ?? []).length }),
    });
    return { requestId: result.requestId, video: result.data.video, updates, requests };
  },

  // response.ts: a 422 becomes ValidationError with fieldErrors
  async validation() {
    try {
      await fal.queue.submit(T2V, { input: { aspect_ratio: "9x16" } });
      return { thrown: false, requests };
    } catch (error) {
      return { thrown: true, ...errorFacts(error), requests };
    }
  },

  // headers.ts startTimeout → x-fal-request-timeout; response.ts isUserTimeout on the 504
  async start_timeout() {
    const running = (await fal.queue.submit(T2V, { input: { prompt: "holds the only runner" } })).request_id;
    const { request_id: requestId } = await fal.queue.submit(T2V, { input: { prompt: "waits too long" },
                                                                   startTimeout: 1.2 });
    const done = await fal.queue.subscribeToStatus(T2V, { requestId, mode: "polling", pollInterval: 50 });
    let result;
    try {
      result = { data: (await fal.queue.result(T2V, { requestId })).data };
    } catch (error) {
      result = errorFacts(error);
    }
    await fal.queue.cancel(T2V, { requestId: running });
    return { done, result, requests };
  },
};

const name = process.argv[2];
try {
  if (!scenarios[name]) throw new Error(`unknown scenario ${name}`);
  process.stdout.write(JSON.stringify({ ok: true, ...(await scenarios[name]()) }) + "\n");
} catch (error) {
  process.stdout.write(JSON.stringify({ ok: false, error: errorFacts(error), stack: String(error?.stack),
                                        requests }) + "\n");
  process.exitCode = 1;
}
