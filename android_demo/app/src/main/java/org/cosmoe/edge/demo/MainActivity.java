package org.cosmoe.edge.demo;

import android.app.Activity;
import android.os.Bundle;
import android.os.Handler;
import android.os.Looper;
import android.view.View;
import android.widget.AdapterView;
import android.widget.ArrayAdapter;
import android.widget.Button;
import android.widget.CheckBox;
import android.widget.EditText;
import android.widget.ScrollView;
import android.widget.SeekBar;
import android.widget.Spinner;
import android.widget.TextView;
import android.widget.Toast;

import org.cosmoe.edge.ArtifactException;
import org.cosmoe.edge.CachePolicy;
import org.cosmoe.edge.EdgeRun;
import org.cosmoe.edge.EngineFactory;
import org.cosmoe.edge.Generator;
import org.cosmoe.edge.Manifest;
import org.cosmoe.edge.MetricsTable;
import org.cosmoe.edge.ProcStats;
import org.cosmoe.edge.ProgramLoader;
import org.cosmoe.edge.Report;
import org.cosmoe.edge.onnx.OnnxLoader;

import java.io.File;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.text.SimpleDateFormat;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Date;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * The demo screen: pick an artifact, type a prompt, Generate/Stop, watch the text stream with
 * edge-run's metrics, save edge-run's report. The run itself is org.cosmoe.edge.EdgeRun on a
 * worker thread, with ExecuTorch programs.
 */
public final class MainActivity extends Activity {
    private static final int THREADS = 1;
    /** Present in the Gradle build only (see loader()). */
    private static final String EXECUTORCH_LOADER = "org.cosmoe.edge.demo.ExecuTorchLoader";

    private final ExecutorService worker = Executors.newSingleThreadExecutor();
    private final Handler ui = new Handler(Looper.getMainLooper());
    private final AtomicBoolean stop = new AtomicBoolean();
    private final List<File> artifacts = new ArrayList<>();

    private Spinner artifactSpinner;
    private EditText prompt;
    private EditText maxTokens;
    private Spinner backend;
    private Spinner policy;
    private CheckBox prefetch;
    private TextView budgetLabel;
    private SeekBar budget;
    private Button generate;
    private Button stopButton;
    private Button save;
    private TextView metrics;
    private TextView output;
    private ScrollView outputScroll;

    /** [minimum, all experts' bytes] of the chosen artifact; null when it cannot be read. */
    private long[] budgetRange;
    private Report lastReport;
    private boolean running;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_main);
        artifactSpinner = (Spinner) findViewById(R.id.artifact);
        prompt = (EditText) findViewById(R.id.prompt);
        maxTokens = (EditText) findViewById(R.id.max_tokens);
        backend = (Spinner) findViewById(R.id.backend);
        policy = (Spinner) findViewById(R.id.policy);
        prefetch = (CheckBox) findViewById(R.id.prefetch);
        budgetLabel = (TextView) findViewById(R.id.budget_label);
        budget = (SeekBar) findViewById(R.id.budget);
        generate = (Button) findViewById(R.id.generate);
        stopButton = (Button) findViewById(R.id.stop);
        save = (Button) findViewById(R.id.save);
        metrics = (TextView) findViewById(R.id.metrics);
        output = (TextView) findViewById(R.id.output);
        outputScroll = (ScrollView) findViewById(R.id.output_scroll);

        backend.setAdapter(new ArrayAdapter<>(this, android.R.layout.simple_spinner_dropdown_item, Manifest.BACKENDS));
        if (!hasExecuTorch()) {  // the offline build (make apk): start on the backend it has
            backend.setSelection(Manifest.BACKENDS.indexOf("onnx"));
        }
        backend.setOnItemSelectedListener(new AdapterView.OnItemSelectedListener() {
            @Override
            public void onItemSelected(AdapterView<?> parent, View view, int position, long id) {
                if (!artifacts.isEmpty()) {  // the budget's range is the chosen backend's experts'
                    readArtifact(artifacts.get(artifactSpinner.getSelectedItemPosition()));
                }
            }

            @Override
            public void onNothingSelected(AdapterView<?> parent) {
            }
        });
        policy.setAdapter(new ArrayAdapter<>(this, android.R.layout.simple_spinner_dropdown_item,
                CachePolicy.NAMES));
        findViewById(R.id.refresh).setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                refreshArtifacts();
            }
        });
        artifactSpinner.setOnItemSelectedListener(new AdapterView.OnItemSelectedListener() {
            @Override
            public void onItemSelected(AdapterView<?> parent, View view, int position, long id) {
                readArtifact(artifacts.get(position));
            }

            @Override
            public void onNothingSelected(AdapterView<?> parent) {
                budgetRange = null;
            }
        });
        budget.setOnSeekBarChangeListener(new SeekBar.OnSeekBarChangeListener() {
            @Override
            public void onProgressChanged(SeekBar seekBar, int progress, boolean fromUser) {
                showBudget();
            }

            @Override
            public void onStartTrackingTouch(SeekBar seekBar) {
            }

            @Override
            public void onStopTrackingTouch(SeekBar seekBar) {
            }
        });
        generate.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                startRun();
            }
        });
        stopButton.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                stop.set(true);
            }
        });
        save.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                saveReport();
            }
        });
        refreshArtifacts();
    }

    @Override
    protected void onDestroy() {
        stop.set(true);
        worker.shutdown();
        super.onDestroy();
    }

    private File filesDir() {
        File dir = getExternalFilesDir(null);
        return dir != null ? dir : getFilesDir();
    }

    /** Artifacts are folders with a manifest.json under the app's files folder (where adb pushes them). */
    private void refreshArtifacts() {
        artifacts.clear();
        File base = filesDir();
        if (new File(base, Manifest.MANIFEST).isFile()) {
            artifacts.add(base);
        }
        File[] children = base.listFiles();
        if (children != null) {
            Arrays.sort(children);
            for (File f : children) {
                if (new File(f, Manifest.MANIFEST).isFile()) {
                    artifacts.add(f);
                }
            }
        }
        List<String> names = new ArrayList<>();
        for (File f : artifacts) {
            names.add(f.getName());
        }
        artifactSpinner.setAdapter(new ArrayAdapter<>(this, android.R.layout.simple_spinner_dropdown_item, names));
        if (artifacts.isEmpty()) {
            budgetRange = null;
            metrics.setText(getString(R.string.no_artifact, base.getAbsolutePath()));
        }
        generate.setEnabled(!running && !artifacts.isEmpty());
    }

    private void readArtifact(File artifact) {
        try {
            budgetRange = EngineFactory.budgetRange(Manifest.load(artifact), selectedBackend());
            metrics.setText(artifact.getAbsolutePath());
        } catch (ArtifactException e) {
            budgetRange = null;
            metrics.setText(e.getMessage());
        }
        showBudget();
    }

    private static boolean hasExecuTorch() {
        try {
            Class.forName(EXECUTORCH_LOADER);
            return true;
        } catch (ClassNotFoundException | LinkageError e) {
            return false;
        }
    }

    /**
     * The backend's program loader. ExecuTorch is reached by name: the Gradle build has it, the offline build
     * (scripts/build_apk.sh) cannot (its Java API needs fbjni and SoLoader classes that only Maven carries).
     */
    private static ProgramLoader loader(String backend) {
        if (backend.equals("onnx")) {
            return new OnnxLoader(THREADS);
        }
        try {
            return (ProgramLoader) Class.forName(EXECUTORCH_LOADER).getDeclaredConstructor(int.class).newInstance(THREADS);
        } catch (ReflectiveOperationException | LinkageError e) {
            throw new ArtifactException("this build has no ExecuTorch backend (build the app with Gradle for it); "
                    + "choose onnx", "missing_backend");
        }
    }

    private String selectedBackend() {
        return (String) backend.getSelectedItem();
    }

    /** The slider runs from the minimum budget to all experts; its right end is edge-run's "all". */
    private String budgetString() {
        if (budgetRange == null || budget.getProgress() == budget.getMax()) {
            return "all";
        }
        long min = budgetRange[0];
        return String.valueOf(min + (budgetRange[1] - min) * budget.getProgress() / budget.getMax());
    }

    private void showBudget() {
        if (budgetRange == null) {
            budgetLabel.setText("");
            return;
        }
        String b = budgetString();
        budgetLabel.setText(b.equals("all")
                ? getString(R.string.budget_all, MetricsTable.mb(budgetRange[1]))
                : getString(R.string.budget_bytes, MetricsTable.mb(Long.parseLong(b)), MetricsTable.mb(budgetRange[1]),
                        MetricsTable.mb(budgetRange[0])));
    }

    private void startRun() {
        if (artifacts.isEmpty()) {
            return;
        }
        final EdgeRun.Request req = new EdgeRun.Request();
        req.artifact = artifacts.get(artifactSpinner.getSelectedItemPosition());
        req.prompt = prompt.getText().toString();
        req.backend = selectedBackend();
        req.memoryBudget = budgetString();
        req.cachePolicy = (String) policy.getSelectedItem();
        req.prefetch = prefetch.isChecked();
        try {
            req.maxNewTokens = Integer.parseInt(maxTokens.getText().toString().trim());
            req.validate();
        } catch (IllegalArgumentException e) {
            metrics.setText(e instanceof NumberFormatException ? "max new tokens must be a number" : e.getMessage());
            return;
        }
        stop.set(false);
        lastReport = null;
        output.setText("");
        metrics.setText("loading " + req.artifact.getName() + " …");
        setRunning(true);
        worker.execute(new Runnable() {
            @Override
            public void run() {
                generateOnWorker(req);
            }
        });
    }

    /** On the worker thread. */
    private void generateOnWorker(EdgeRun.Request req) {
        EdgeRun.Listener listener = new EdgeRun.Listener() {
            @Override
            public void write(final String text) {
                ui.post(new Runnable() {
                    @Override
                    public void run() {
                        output.append(text);
                        outputScroll.post(new Runnable() {
                            @Override
                            public void run() {
                                outputScroll.fullScroll(View.FOCUS_DOWN);
                            }
                        });
                    }
                });
            }

            @Override
            public void onProgress(EdgeRun.Progress p) {
                final String table = MetricsTable.of(p);
                ui.post(new Runnable() {
                    @Override
                    public void run() {
                        metrics.setText(table);
                    }
                });
            }
        };
        String message;
        Report report = null;
        try {
            ProcStats.resetPeak();  // the peak of this run, as a fresh edge-run process would report
            Generator.StopSignal stopSignal = new Generator.StopSignal() {
                @Override
                public boolean stopRequested() {
                    return stop.get();
                }
            };
            report = EdgeRun.run(req, loader(req.backend), listener, stopSignal);
            message = MetricsTable.of(report);
        } catch (ArtifactException | IllegalArgumentException e) {
            message = "error: " + e.getMessage();
        } catch (RuntimeException | OutOfMemoryError e) {
            message = "error: " + e;
        }
        final Report done = report;
        final String text = message;
        ui.post(new Runnable() {
            @Override
            public void run() {
                lastReport = done;
                metrics.setText(text);
                setRunning(false);
            }
        });
    }

    private void setRunning(boolean running) {
        this.running = running;
        generate.setEnabled(!running);
        stopButton.setEnabled(running);
        save.setEnabled(!running && lastReport != null);
        artifactSpinner.setEnabled(!running);
        budget.setEnabled(!running);
    }

    /** Writes the report JSON (edge-run --report's) into the app's files folder, beside the artifacts. */
    private void saveReport() {
        if (lastReport == null) {
            return;
        }
        File dir = new File(filesDir(), "reports");
        String stamp = new SimpleDateFormat("yyyyMMdd-HHmmss", Locale.ROOT).format(new Date());
        File file = new File(dir, "report-" + stamp + ".json");
        try {
            if (!dir.isDirectory() && !dir.mkdirs()) {
                throw new IOException("cannot create " + dir);
            }
            try (OutputStream out = new FileOutputStream(file)) {
                out.write(lastReport.toJson().getBytes(StandardCharsets.UTF_8));
            }
            Toast.makeText(this, getString(R.string.report_saved, file.getAbsolutePath()), Toast.LENGTH_LONG).show();
        } catch (IOException e) {
            Toast.makeText(this, "cannot save the report: " + e.getMessage(), Toast.LENGTH_LONG).show();
        }
    }
}
