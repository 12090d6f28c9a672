// Shapes every format driver and every command share: what a driver is
// (lib/formats/mod.ts holds the table of them), what opening an image
// yields, what measure and resize take. Commands talk to formats only
// through these; lib/formats never imports lib/cli.
import type { Rec } from "../abi/records.ts";
import type { OptDesc, ParsedOpts } from "./options.ts";
import type { FilePlan, PlanResult } from "./plan.ts";
import type { Qcow2Model } from "./qcow2/model.ts";
import type { RawModel } from "./raw/model.ts";
import type { ImageInfoModel } from "./image_info_model.ts";
import type { VmdkModel } from "./vmdk/model.ts";
import type { LuksModel } from "./luks/model.ts";
import type { LuksNew } from "./luks/create_options.ts";
import type { Qcow2OutputOptions } from "./qcow2/output_plan.ts";
import type { Qcow2CreateOptions } from "./qcow2/create_plan.ts";

/** qemu's preallocation modes (PreallocMode), in its order. */
export const PREALLOC_MODES = ["off", "metadata", "falloc", "full"] as const;
export type Prealloc = typeof PREALLOC_MODES[number];

/** One ERROR record's fields, as a driver turns them into qemu's words. */
export interface GuestErrorFields {
  code: number;
  a0: bigint;
  a1: bigint;
  a2: bigint;
}

/** measure's result; `bitmaps` is present when qemu prints it. */
export interface MeasureResult {
  required: bigint;
  fullyAllocated: bigint;
  bitmaps?: bigint;
}

/** One run of an input as bdrv_block_status_above sees it. */
export interface AllocationExtent {
  start: bigint;
  length: bigint;
  data: boolean;
  zero: boolean;
  /** BDRV_BLOCK_ALLOCATED (map's "present"). */
  allocated: boolean;
}

/** An input image as measure sees it. */
export interface MeasureInput {
  virtualSize: bigint;
  /** Extents covering [0, virtualSize) in order. */
  extents: AllocationExtent[];
  /** The input format keeps persistent bitmaps (qcow2 v3); they number zero here. */
  supportsBitmaps: boolean;
  /** Its persistent dirty bitmaps (qcow2): granularity and name length in bytes. */
  bitmaps?: { granularity: bigint; nameLength: number }[];
}

/** What measure supplies a driver besides the options (luks: the secret its options name). */
export interface MeasureHost {
  /** The passphrase of secret `id`, or qemu's refusal thrown as an Error with its words. */
  passphrase(id: string): Uint8Array;
}

/** What a scan of a source reports to the vpc/vhdx/vmdk size calculators. */
export interface AllocationSummary {
  /** Bytes of guest data the source holds (never above virtualSize; clamped if it is). */
  allocatedBytes: bigint;
  virtualSize: bigint;
}

/** The vpc/vhdx/vmdk calculators' answer. */
export interface SizeEstimate {
  required: bigint;
  fullyAllocated: bigint;
}

/** A resize as the vpc/vhdx/vmdk planners take it. */
export interface ResizeRequest {
  newSize: bigint;
  shrink: boolean;
  /** Plan although qemu-img 7.2 refuses to resize this format (fuzzing, future commands). */
  beyondQemu?: boolean;
}

/**
 * Where one chain layer's block-status answers end, as qemu 7.2's driver
 * gives them (convert's request model, lib/convert/convert_requests.ts): at
 * the next extent's start and at the next multiple of `span` counted from
 * the extent's start (span 0n: no such limit; the file's holes and data
 * still cut a raw file's or flat extent's answers). qcow2: one extent, an L2
 * table's reach; vmdk: each extent, a sparse one's grain; vpc (dynamic): one
 * extent of its block size, `dataOnly`. Raw, vhdx, a fixed VHD: none.
 */
export interface StatusLayer {
  /** Ascending starts, the first at 0. */
  extents: { start: bigint; span: bigint }[];
  /** Only the layer's own data answers end there (vpc: an allocated block is one answer, unallocated ones run on). */
  dataOnly?: boolean;
}

/** What a driver decodes from the info guest's records about one input. */
export interface DecodedImage {
  virtualSize: bigint;
  /** qemu's bdrv_getlength: the bytes a reader of the image sees. */
  length: bigint;
  /** What `info` prints as cluster_size, when it prints one. */
  clusterSize?: bigint;
  dirty: boolean;
  backingFile?: Uint8Array;
  backingFormat?: string;
  /** The image names a file outside its backing chain (qcow2 external data file). */
  namesDataFile: boolean;
  qcow2?: Qcow2Model;
  raw?: RawModel;
  image?: ImageInfoModel;
  /** vmdk: create type, CIDs and the extents (whose files the host attaches). */
  vmdk?: VmdkModel;
  /** luks: the header (algorithms, key slots, payload offset). */
  luks?: LuksModel;
  /** The image's data is encrypted (info's "encrypted: yes"). */
  encrypted?: boolean;
}

/** Host file operations a create step needs; the command supplies them. */
export interface CreateHost {
  /** Creates or empties the file (file-posix's create). */
  createFile(): Promise<void>;
  /** ftruncate to `size`; `hint` is appended to qemu's "too large" message. */
  resizeFile(size: bigint, hint: string): Promise<void>;
  /** Allocates a range as zeroes (posix_fallocate for falloc, written zeroes for full). */
  allocate(offset: bigint, length: bigint, mode: string): Promise<void>;
  applyPlan(plan: FilePlan): Promise<void>;
  /** Removes the file again (qcow2's create deletes it on failure). */
  remove(): Promise<void>;
  /** strerror()-style text of an error one of these threw. */
  describe(e: unknown): string;
  /** The passphrase of secret `id` (--object secret), or qemu's refusal thrown (luks). */
  passphrase?(id: string): Uint8Array;
  /** params.kdf_max_iters (INSTAR_MAX_KDF_ITERS), the bound on written iteration counts (luks). */
  kdfMaxIters?(): bigint;
}

/** A create step's refusal, in qemu's words (the command prefixes the file name). */
export class CreateError extends Error {
  constructor(message: string, readonly hint = "") {
    super(message);
    this.name = "CreateError";
  }
}

/** A format's create support: qemu's create_opts and its .bdrv_co_create_opts. */
export interface CreateSupport {
  /** Every -o option create accepts, the file driver's included (qemu's order). */
  options: OptDesc[];
  /** What `-o help` lists without a file name (the format's own options). */
  own: OptDesc[];
  run(filename: string, opts: ParsedOpts, host: CreateHost): Promise<void>;
}

/** One format instar knows by name. Only `name` is required: the rest is what instar does with it. */
export interface FormatDriver {
  /** qemu's driver name (-f, -O). */
  readonly name: string;
  /** formats.* when instar's guests read this format. */
  readonly code?: number;
  /** Decodes the info guest's records for `input` (throws GuestResultError on nonsense). */
  readonly decode?: (recs: Rec[], input: number, fileSize: bigint) => DecodedImage;
  /** qemu's text for an open failure the guest reported (after "Could not open 'FILE': "). */
  readonly openError?: (
    e: GuestErrorFields,
    features: string[],
    filename: string,
    /** The names qemu prints for the run's inputs: the image, then its vmdk extent files. */
    inputNames?: string[],
  ) => string;
  /** `qemu-img check` has a check for this format (else "does not support checks", exit 63). */
  readonly check?: boolean;
  readonly create?: CreateSupport;
  /** measure -O this format: qemu's numbers (raw, qcow2) or instar's estimate (the others). */
  readonly measure?: (
    opts: ParsedOpts,
    input?: MeasureInput,
    host?: MeasureHost,
  ) => PlanResult<MeasureResult>;
  /** measure needs only the input's size (luks: every sector is written), no allocation scan. */
  readonly measureSizeOnly?: boolean;
  /** measure is instar's estimate of its own convert: it takes the input's allocation as that
   * convert sees it (precise runs), not qemu's view (a VHDX is all data to qemu). */
  readonly measureEstimate?: boolean;
  /** convert can write this format: the target's `-o` values checked and typed. */
  readonly convertTarget?: ConvertTarget;
  /** resize can change this format's virtual size (else qemu's "does not support resize"). */
  readonly resize?: ResizeSupport;
  /**
   * Where this format's block-status answers end for one opened image, from
   * what its open decoded (never image bytes); undefined where convert's
   * request model does not reach the image (it then writes per cluster).
   */
  readonly statusLayer?: (img: DecodedImage) => StatusLayer | undefined;
}

/** Guest blocks [block, block+count) were written to slots slot, slot+stride, ... (a DATA_RUN). */
export interface BlockRun {
  block: bigint;
  count: bigint;
  slot: bigint;
}

/**
 * A target whose data the guest writes in fixed-size blocks (vpc, vhdx):
 * "slots" packs the blocks that hold data from dataStart on in guest order,
 * each in a slot of slotPrefix + blockSize bytes (the guest fills the
 * prefix with 0xFF bytes); "inplace" writes guest byte x at dataStart + x.
 * The driver's planner then writes all metadata from what the guest reports.
 */
export interface BlockOutput {
  placement: "slots" | "inplace";
  /** A power of two, 512 B .. 256 MiB. */
  blockSize: bigint;
  /** Bytes before each block's data in its slot (<= 4096). */
  slotPrefix: bigint;
  dataStart: bigint;
  /** The guest's output cap: the fully allocated image's size (the measure calculator's bound). */
  cap: bigint;
  /** The metadata plan for data written up to dataEnd; `runs` come from the guest and are validated. */
  finish(dataEnd: bigint, runs: BlockRun[]): PlanResult<FilePlan>;
}

/** A grain the guest deflated and packed (streamOptimized VMDK): its
 * marker and stream start at `offset` and take `length` bytes (whole sectors). */
export interface PackedGrain {
  grain: bigint;
  offset: bigint;
  length: bigint;
}

/**
 * A target whose grains the guest compresses one by one and packs from
 * dataStart on in guest order (streamOptimized VMDK: a 12-byte marker, the
 * zlib stream, padding to a sector). The planner writes the metadata.
 */
export interface StreamOutput {
  /** Bytes per grain (64 KiB). */
  grainSize: bigint;
  dataStart: bigint;
  /** The most bytes one packed grain takes (marker, incompressible stream, padding). */
  grainMax: bigint;
  /** The metadata plan for grains packed up to dataEnd (untrusted: the planner validates them). */
  finish(dataEnd: bigint, grains: PackedGrain[]): PlanResult<FilePlan>;
}

/** One file of a multi-file target (VMDK extents): it holds guest bytes [from, to). */
export interface ExtentOutput {
  /** The file's path as the user's target name implies it (written under a temporary name first). */
  path: string;
  from: bigint;
  to: bigint;
  /** Its layout; block numbers and offsets are relative to the extent. */
  blocks: BlockOutput;
}

/** A target made of a descriptor file (the target name) and extent files. */
export interface ExtentsOutput {
  extents: ExtentOutput[];
  /** The descriptor file's plan, once the data is written (`written`: any data byte was). */
  descriptor(written: boolean): FilePlan;
}

/** What convert's guest pipeline needs to know about its target. */
export interface OutputSpec {
  /** Which writer the pipeline runs (lib/convert/pipeline.ts). */
  writer: "raw" | "qcow2" | "blocks" | "stream" | "extents" | "luks";
  preallocation: Prealloc;
  qcow2?: Qcow2OutputOptions;
  /** qcow2: the create options themselves (a preallocated target is created as `create` makes it). */
  qcow2Create?: Qcow2CreateOptions;
  blocks?: BlockOutput;
  stream?: StreamOutput;
  extents?: ExtentsOutput;
  /** LUKS1 output: the algorithms and key-secret name (lib/convert/luks_target.ts). */
  luks?: LuksNew & { cipherName: string };
  /** `-c` for a writer other than qcow2: accepted (the output is the same, or
   * compressed anyway) or refused with qemu's words; unset: qemu's
   * "Compression not supported for this file format". */
  compress?: { accepted: true } | { accepted: false; message: string };
}

/** A target format's reading of convert's `-o`. Errors of kind "unsupported"
 * are instar's own refusals; the others are reported as qemu's bdrv_create
 * reports them ("<file>: error while converting <fmt>: ..."). */
export interface ConvertTarget {
  /** `target`: the output file name as given (vmdk names its extents after it). */
  spec(opts: ParsedOpts, target: string): PlanResult<OutputSpec>;
}

/** What resize asks of a format driver, after the command's own checks
 * (qemu-img's img_resize: size parsed, sign applied, shrink/preallocation
 * rules, BDRV_MAX_LENGTH). */
export interface ResizeJob {
  /** The name qemu prints for the image. */
  filename: string;
  /** The image as opened (the driver's decoded model is on it). */
  image: DecodedImage & { fileSize: bigint };
  /** The new virtual size in bytes (> 0, <= BDRV_MAX_LENGTH). */
  newSize: bigint;
  shrink: boolean;
  preallocation: Prealloc;
  /**
   * The caller holds the image's persistent bitmaps (marked in use before,
   * stored anew after, for the new size): the resize leaves them alone, as
   * qcow2_co_truncate does under a commit job (bdrv_dirty_bitmap_truncate
   * only resizes them in memory).
   */
  bitmapsHeld?: boolean;
}

/** A guest resize_scan run's outcome, the input's identity already checked. */
export interface ResizeScanResult {
  records: Rec[];
  /** The input's size as the guest saw it. */
  fileSize: bigint;
  guestStatus: bigint;
}

/**
 * What the resize command supplies to a driver: the sandboxed scan, the
 * plan applier and qemu's error shapes. lib/formats does no host I/O of its
 * own; every write goes through applySteps, which re-checks the file's
 * identity and each plan's invariants before the first byte.
 */
export interface ResizeHost {
  /** Runs the resize_scan guest on the image as format `code` with args. */
  scan(code: number, args: bigint[]): Promise<ResizeScanResult>;
  /**
   * Applies the steps in order, each followed by fdatasync. Zero patches
   * inside the file: "discard" punches a hole (best effort, as qemu's
   * discard), "write" writes zeroes (the bytes must read as zero). `plain`:
   * no preallocation past the end (steps after the resize's own). Each
   * call starts from the length the previous one left.
   */
  applySteps(
    steps: FilePlan[],
    what: string,
    zeroInside: "discard" | "write",
    plain?: boolean,
  ): Promise<void>;
  /** An error printed as these lines (qemu's own words). */
  fail(lines: string[]): Error;
  /** "Could not resize 'FILE': why" (instar's refusals). */
  refuse(why: string): Error;
  /**
   * Runs the bitmap_scan guest on the image as it is now (qcow2 persistent
   * bitmaps); with `len`, set bits are judged against that many bytes.
   */
  bitmapScan?(len?: bigint): Promise<{ records: Rec[]; fileSize: bigint }>;
}

/** A format's resize: its truncate, from the checks to the last write. */
export interface ResizeSupport {
  run(job: ResizeJob, host: ResizeHost): Promise<void>;
}
