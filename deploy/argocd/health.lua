-- Argo CD health check for batchcompute.azureml.dev/BatchComputeAttachment.
--
-- Installed by argocd-cm-patch.yaml beside this file, as the argocd-cm key
-- resource.customizations.health.batchcompute.azureml.dev_BatchComputeAttachment
-- (the README's "GitOps" section shows how). Argo CD calls it with the live object in the
-- global `obj` and reads `status` and `message` from the table it returns.
--
-- The status follows kstatus (sigs.k8s.io/cli-utils, pkg/kstatus): the operator writes
-- status.observedGeneration before it calls ARM for a new generation, and three conditions,
-- each carrying the generation it was computed for:
--   Ready        True only when the compute is attached as declared
--   Reconciling  True while an attach, a detach or a transient retry is under way
--   Stalled      True when a human is needed; the message says what to do
--
-- Verdicts, first match wins:
--   metadata.deletionTimestamp set                          Progressing (detaching)
--   no status, or status.observedGeneration ~= generation   Progressing (edit not seen yet)
--   Stalled=True                                             Degraded, the condition's message
--   Reconciling=True                                         Progressing
--   Ready=True                                               Healthy
--   anything else                                            Progressing
-- A condition computed for an older generation than metadata.generation counts as absent.
--
-- Only the base and table libraries are used: Argo CD runs health scripts without the
-- string and math libraries unless resource.customizations.useOpenLibs is set.

local generation = obj.metadata.generation

local function current_condition(type_name)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_name then
      if c.observedGeneration ~= nil and generation ~= nil and c.observedGeneration ~= generation then
        return nil
      end
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

local function text(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

local hs = {}

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  local stalled = current_condition("Stalled")
  if is_true(stalled) then
    hs.message = "Being deleted, detach blocked: " .. text(stalled, "see the Stalled condition")
  else
    hs.message = "Being deleted: " .. text(current_condition("Reconciling"),
      "waiting for the operator to detach the compute and remove its finalizer")
  end
  return hs
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe the resource"
  return hs
end

if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (status describes generation " .. tostring(obj.status.observedGeneration) .. ")"
  return hs
end

local stalled = current_condition("Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  hs.message = text(stalled, "Stalled")
  return hs
end

local reconciling = current_condition("Reconciling")
if is_true(reconciling) then
  hs.status = "Progressing"
  hs.message = text(reconciling, "Reconciling")
  return hs
end

local ready = current_condition("Ready")
if is_true(ready) then
  hs.status = "Healthy"
  hs.message = text(ready, "Attached")
  return hs
end

hs.status = "Progressing"
hs.message = text(ready, "Waiting for the operator to report Ready")
return hs
